"""Ripcord's flag daemon: a flagd-compatible evaluation and sync server.

Inside, data flows one way, the way upstream flagd's Go core is laid out:
``sources`` (files on disk) -> ``definitions`` (parse + validate) -> ``store`` (merge,
flag sets, selectors, versions) -> ``evaluator`` (compiled JsonLogic) -> ``service``
(gRPC evaluation, sync, management HTTP).
"""
