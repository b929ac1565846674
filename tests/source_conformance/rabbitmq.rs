//! STUB: the rabbitmq harness is being written.
