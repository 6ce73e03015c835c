"""Exported models: writing ONNX, OpenVINO IR and TorchScript files (:mod:`.export`), int8 quantization
(:mod:`.quantize`), running any of them behind one interface (:mod:`.runners`: ``load_runner``) and checking
them against PyTorch (:mod:`.verify`). ONNX Runtime, OpenVINO and NNCF are optional (:mod:`.extras`)."""
