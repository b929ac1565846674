//! STUB: the postgres harness is being written.
