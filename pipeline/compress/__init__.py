"""Compress: training with pruning and QAT, int8 conversion, reading the .tflite, host TFLite Micro."""
