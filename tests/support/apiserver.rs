//! Kubernetes API server stand-in on 127.0.0.1 (see DESIGN.md, Testing).
