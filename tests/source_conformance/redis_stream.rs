//! STUB: the redis_stream harness is being written.
