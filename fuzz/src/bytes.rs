//! bytes: reading a fuzz input as a sequence of small decisions and byte strings.
//! Past the end every number reads as zero and every string as empty, so any input
//! is a valid one.

pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    /// A string of up to 255 bytes: a length byte, then the bytes.
    pub fn short(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.take(n)
    }

    /// A byte string of up to 65535 bytes: a u16 length, then the bytes.
    pub fn long(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Transfer sizes from one byte: its top 3 bits pick a class (whole, 1 byte, up to
/// 16, up to 512, up to 20000...), the rest seeds a generator, so one byte of input
/// decides how a whole stream is cut.
pub struct Splits {
    class: u8,
    state: u32,
}

impl Splits {
    pub fn new(b: u8) -> Splits {
        Splits {
            class: b >> 5,
            state: 0x9E37_79B9 ^ u32::from(b),
        }
    }

    pub fn next(&mut self) -> usize {
        // xorshift32
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        let r = x as usize;
        match self.class {
            0 => usize::MAX,
            1 => 1,
            2 => 1 + r % 16,
            3 => 1 + r % 512,
            4 => 1 + r % 20_000,
            5 => [1, 2, 3, 5, 7, 64, 1000][r % 7],
            6 => 1 + r % 5,
            _ => 1 + r % 70_000,
        }
    }
}
