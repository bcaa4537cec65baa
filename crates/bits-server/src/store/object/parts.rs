//! Which stored objects make up an upload: fragment objects (parts) and the contiguous chain
//! of them that covers the upload from offset 0.

use object_store::path::Path;

/// One fragment object: bytes `[offset, offset + len)` of the upload.
#[derive(Clone, Debug)]
pub(super) struct Part {
    pub(super) path: Path,
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl Part {
    pub(super) fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// Bytes `[skip, skip + take)` of one part object.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub(super) path: Path,
    pub(super) skip: u64,
    pub(super) take: u64,
}

/// Chooses parts covering `[0, limit)` contiguously from offset 0 (as far as they reach):
/// at each step the part starting at or before the covered length that reaches furthest.
/// `parts` must be sorted by offset. Returns the covered length and the byte ranges to read.
pub(super) fn cover(parts: &[Part], limit: u64) -> (u64, Vec<Segment>) {
    cover_from(parts, 0, limit)
}

/// [`cover`] from offset `from` on: returns the end of the contiguous coverage (`from` if none).
pub(super) fn cover_from(parts: &[Part], from: u64, limit: u64) -> (u64, Vec<Segment>) {
    let (mut covered, mut segments, mut i) = (from, Vec::new(), 0usize);
    while covered < limit {
        let mut best: Option<&Part> = None;
        while let Some(p) = parts.get(i).filter(|p| p.offset <= covered) {
            let further = match best {
                Some(b) => p.end() > b.end(),
                None => true,
            };
            if further {
                best = Some(p);
            }
            i += 1;
        }
        match best.filter(|p| p.end() > covered) {
            Some(p) => {
                let take = p.end().min(limit) - covered;
                segments.push(Segment {
                    path: p.path.clone(),
                    skip: covered - p.offset,
                    take,
                });
                covered += take;
            }
            None => break,
        }
    }
    (covered, segments)
}

/// `<offset>-<len>-<random>` as written by `write`.
pub(super) fn parse_part_name(name: &str) -> Option<(u64, u64)> {
    let mut it = name.splitn(3, '-');
    let offset = it.next()?.parse().ok()?;
    let len = it.next()?.parse().ok()?;
    it.next()?;
    Some((offset, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: u64, len: u64) -> Part {
        Part {
            path: Path::from(format!("p/{offset}-{len}")),
            offset,
            len,
        }
    }

    fn sorted(mut parts: Vec<Part>) -> Vec<Part> {
        parts.sort_by_key(|p| (p.offset, std::cmp::Reverse(p.len)));
        parts
    }

    #[test]
    fn cover_is_contiguous() {
        let parts = sorted(vec![part(0, 10), part(10, 5), part(30, 5)]);
        assert_eq!(cover(&parts, u64::MAX).0, 15);
        let parts = sorted(vec![part(0, 10), part(5, 20), part(3, 4), part(25, 1)]);
        let (covered, segs) = cover(&parts, u64::MAX);
        assert_eq!(covered, 26);
        let spans: Vec<_> = segs.iter().map(|s| (s.skip, s.take)).collect();
        assert_eq!(spans, vec![(0, 10), (5, 15), (0, 1)]);
        let (covered, segs) = cover(&parts, 12);
        assert_eq!(covered, 12);
        assert_eq!(segs.iter().map(|s| s.take).sum::<u64>(), 12);
        assert_eq!(cover(&sorted(vec![part(1, 10)]), u64::MAX).0, 0);
        assert_eq!(cover(&[], u64::MAX).0, 0);
    }

    #[test]
    fn part_names_round_trip() {
        let name = format!("{:020}-{:020}-{}", 5u64, 7u64, "ab12");
        assert_eq!(parse_part_name(&name), Some((5, 7)));
        assert_eq!(parse_part_name("commit.tmp"), None);
    }
}
