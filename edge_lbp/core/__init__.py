"""The core below the engines: what the workstation and the device share and both build on.

The LBP-WHT math (``bases``, ``geometry``, ``wht``, ``wht_kernels``, ``energy``), zeroth-order SPSA (``zo``), the
op contract (``ops``), the artifact format (``artifact``, ``packaged``), how ONNX Runtime training names what it
generates (``ort_names``), shared graph helpers (``graphs``), and process settings, defaults and file helpers
(``config``, ``defaults``, ``files``). numpy, numba, onnx and safetensors only; nothing here imports the exporter,
the runtime or the application (``tests/test_layers.py``).
"""
