//! placeholder
pub struct Lessor;
