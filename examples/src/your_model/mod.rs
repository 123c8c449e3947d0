//! The tutorial of `docs/your-model.md`: a Burn user's CNN before ([`float`]) and after
//! ([`qat`]) it becomes BitNet W1.58A8, both compiled, and the size of the change.

pub mod float;
pub mod qat;

/// The lines `after` adds to `before` and the lines it removes, as a unified diff counts them
/// (a longest common subsequence of lines).
pub fn changed_lines(before: &str, after: &str) -> (usize, usize) {
    let (a, b): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let common = lcs[0][0];
    (b.len() - common, a.len() - common)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qat_version_adds_eleven_lines_and_removes_six() {
        let (added, removed) = changed_lines(include_str!("float.rs"), include_str!("qat.rs"));
        // Imports 4 - 2, the full-precision first convolution and head 3 - 1, the trained
        // type, the Learner and the QAT metrics 4 - 3.
        assert_eq!((added, removed), (11, 6));
        assert_eq!(changed_lines("a\nb\nc", "a\nx\nc\nd"), (2, 1));
    }
}
