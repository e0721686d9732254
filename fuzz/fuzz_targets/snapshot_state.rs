//! The snapshot state parser (`state.json`) on any bytes: what a corrupt, truncated or
//! hostile snapshot directory holds. It must answer with an error, never panic; what it
//! accepts must write back and parse to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::snapshot::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = parse(data) {
        let again = serde_json::to_vec(&s).expect("a parsed snapshot serializes");
        let back = parse(&again).expect("what was accepted is accepted again");
        assert_eq!(back.machine, s.machine);
        assert_eq!(back.memory, s.memory);
        assert_eq!(back.arch, s.arch);
        assert_eq!(back.devices, s.devices);
    }
});
