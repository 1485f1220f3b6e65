//! placeholder: exchange (being written)
