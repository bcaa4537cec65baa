//! The big-endian counted fields of MIT's file formats (keytab, credential cache), read from
//! untrusted bytes: every read checks what is left.

pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Bytes counted by a 16-bit length (keytab).
    pub fn data16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// Bytes counted by a 32-bit length (credential cache).
    pub fn data32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn string16(&mut self) -> Option<String> {
        String::from_utf8(self.data16()?.to_vec()).ok()
    }

    pub fn string32(&mut self) -> Option<String> {
        String::from_utf8(self.data32()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counted_fields_and_stops_short() {
        let mut r = Reader(b"\x00\x02hi\x00\x00\x00\x01!\x07");
        assert_eq!(r.string16().as_deref(), Some("hi"));
        assert_eq!(r.data32(), Some(&b"!"[..]));
        assert_eq!(r.u8(), Some(7));
        assert!(r.is_empty());
        assert_eq!(r.u16(), None);
        assert_eq!(Reader(b"\x00\x05ab").data16(), None);
    }
}
