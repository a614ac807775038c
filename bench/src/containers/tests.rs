use super::*;

#[test]
fn busybox_ping_lines_give_the_median() {
    let out = "PING 10.0.9.2 (10.0.9.2): 56 data bytes\n\
               64 bytes from 10.0.9.2: seq=0 ttl=64 time=0.300 ms\n\
               64 bytes from 10.0.9.2: seq=1 ttl=64 time=0.100 ms\n\
               64 bytes from 10.0.9.2: seq=2 ttl=64 time=0.200 ms\n\
               round-trip min/avg/max = 0.100/0.200/0.300 ms\n";
    assert_eq!(ping_p50_us(out), Some(200.0));
    assert_eq!(ping_p50_us("no replies"), None);
}
