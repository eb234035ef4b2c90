//! Arbitrary bytes through the dedup text path: shingling (word and character modes, ASCII
//! fast path and byte-at-a-time path), signatures, fingerprints, an Arrow view with offsets
//! taken from the input, and a whole batch dedup. Nothing may panic, and equal texts must
//! give equal results.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mithril_dedup::cluster::Keep;
use mithril_dedup::lsh::Bands;
use mithril_dedup::minhash::Signer;
use mithril_dedup::pipeline::{DedupConfig, Deduper};
use mithril_dedup::shingle::{ShingleConfig, TokenKind};
use mithril_dedup::texts::{ArrowStrings, Offsets, Texts};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let cfg = ShingleConfig {
        tokens: if flags & 1 == 0 { TokenKind::Word } else { TokenKind::Char },
        ngram: 1 + usize::from(flags >> 1 & 7),
        lowercase: flags & 16 != 0,
        nfc: flags & 32 != 0,
        seed: 7,
    };
    let Ok(mut signer) = Signer::new(cfg.clone(), 32) else {
        return;
    };
    let mut a = vec![0u32; 32];
    let mut b = vec![0u32; 32];
    let n1 = signer.sign(text, &mut a);
    let n2 = signer.sign(text, &mut b);
    assert_eq!((n1, &a), (n2, &b));
    let fp = signer.shingler.fingerprints(text);
    assert!(fp.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(fp.is_empty(), n1 == 0);

    // Offsets from the input's bytes: the view must refuse or read in bounds.
    let offsets: Vec<i32> = text.chunks(4).map(|c| i32::from(c[0])).collect();
    if let Some(len) = offsets.len().checked_sub(1) {
        if let Ok(view) = ArrowStrings::new(Offsets::I32(&offsets), text, None, 0, len) {
            for i in 0..view.len() {
                let _ = view.get(i);
            }
            let dcfg = DedupConfig {
                shingle: cfg,
                num_perm: 32,
                bands: Bands { bands: 8, rows: 4 },
                threshold: 0.5,
                verify: true,
                keep: Keep::Longest,
            };
            if let Ok(mut d) = Deduper::new(dcfg) {
                if d.add_batch(&view).is_ok() {
                    d.plan();
                    d.add_sets(0, &view).expect("sets of a planned batch");
                    let c = d.cluster().expect("cluster after add_sets");
                    assert_eq!(c.label.len(), view.len());
                }
            }
        }
    }
});
