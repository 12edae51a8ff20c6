//! File sources and sinks (JSON lines, CSV).
