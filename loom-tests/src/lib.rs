//! Model checks live in tests/.
