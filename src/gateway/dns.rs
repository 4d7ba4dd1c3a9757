//! DNS server (being written).
