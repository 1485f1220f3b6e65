//! placeholder: server (being written)
