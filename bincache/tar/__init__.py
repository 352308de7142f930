"""Archives: packing a prefix (driving the native writer) and safe extraction."""
