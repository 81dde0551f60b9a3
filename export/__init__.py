"""Model -> forward ONNX -> training artifacts -> LBP rewrite -> artifact folder.

An ONNX file needs only the core requirements; a PyTorch model needs the ``export`` extra (torch), and
``--gradients ort`` the ``ort`` extra (onnxruntime-training); those are imported inside the functions that use them.
Modules: ``models`` (model families), ``onnx_export`` (forward ONNX + graph passes), ``training`` (the training,
eval and optimizer graphs: ours, or ORT's), ``lbp_rewrite`` + ``lbp_functions`` (the LBP pass), ``writer`` (the
artifact folder, in the format ``edge_lbp.core.artifact`` defines), ``exporter`` (``export_artifact``, the whole
pipeline, for a method of ``edge_lbp.methods``: ``edge_lbp.export_model`` takes the options' spellings).
"""
