"""Deploy: boards, the AOT engine and TFLite Micro firmware, running on a device, export and reports."""
