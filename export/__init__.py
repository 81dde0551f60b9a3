"""Workstation side: model -> forward ONNX -> ONNX Runtime training artifacts -> LBP rewrite -> artifact folder.

Needs the ``export`` extra (torch, onnxruntime-training); those are imported inside the functions that use them.
Modules: ``models`` (model families), ``onnx_export`` (forward ONNX + graph passes), ``training`` (ORT artifacts),
``lbp_rewrite`` + ``lbp_functions`` (the LBP pass), ``writer`` (the artifact folder, in the format
``edge_lbp.core.artifact`` defines), ``exporter`` (``export_artifact``, the whole pipeline, for a method of
``edge_lbp.methods``: ``edge_lbp.export_model`` takes the options' spellings).
"""
