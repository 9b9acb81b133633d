"""Student checkpoint -> device artefacts (ONNX, TFLite int8, TFLite-Micro C array). Installed as edgekd.exporters."""
