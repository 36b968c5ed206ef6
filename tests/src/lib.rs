//! System test harness for Mica.
