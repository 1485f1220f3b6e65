//! placeholder: jwks (being written)
