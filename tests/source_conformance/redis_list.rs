//! STUB: the redis_list harness is being written.
