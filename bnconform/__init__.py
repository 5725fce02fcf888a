"""bnconform: a behavioural conformance suite for Batch Normalization across deep-learning frameworks.

A regular package (not a namespace package): a folder named ``bnconform`` in the current directory can
then never merge into the installed suite. See README.md for the command line (``bnconform --help``) and
the pytest plugin (``bnconform.plugin``, registered through the ``pytest11`` entry point).
"""
