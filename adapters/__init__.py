"""Built-in adapters, one small module per framework API.

``BUILTIN`` maps each adapter's report name to its ``module:Class`` target and
the framework (import name) it needs. The pytest plugin instantiates them
lazily: a missing framework never breaks collection of the others, and is
reported loudly (an error when ``--framework`` demands it).
"""

BUILTIN: dict[str, tuple[str, str]] = {
    "torch.nn.BatchNorm1d": ("adapters.torch_nn:BatchNorm1d", "torch"),
    "torch.nn.BatchNorm2d": ("adapters.torch_nn:BatchNorm2d", "torch"),
    "torch.nn.BatchNorm3d": ("adapters.torch_nn:BatchNorm3d", "torch"),
    "torch.nn.BatchNorm2d[channels_last]": ("adapters.torch_nn:BatchNorm2dChannelsLast", "torch"),
    "torch.nn.functional.batch_norm": ("adapters.torch_functional:FunctionalBatchNorm", "torch"),
    "torch.nn.BatchNorm2d[cuda]": ("adapters.torch_nn:BatchNorm2dCUDA", "torch"),
}
