//! Shared by the benchmark programs: realistic movie ids (every id shape
//! the parser must handle) and a small deterministic generator, so runs
//! are comparable.

pub const TITLES: &[&str] = &[
    "the+lord+of+the+rings+the+two+towers+2002",
    "toy+story+1995",
    "the+good_+the+bad+and+the+ugly+1966",
    "spider-man+2002",
    "am%C3%A9lie+2001",
    "the+shawshank+redemption+1994",
    "mr.+hollands+opus+1995",
    "star+wars+episode+iv+-+a+new+hope+1977",
    "pulp+fiction+1994",
    "the+matrix",
];

/// xorshift64*.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
