//! placeholder: seal (being written)
