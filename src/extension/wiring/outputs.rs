//! The files generated from the wiring (`make wiring`).
