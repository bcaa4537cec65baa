use crate::common::*;

#[test]
fn create_fragment_close() {
    let s = Server::start("");
    let mut c = s.conn();
    let data = pattern(1000, 1);
    let sid = upload(&mut c, "/upload/a.bin", &data, 300);
    c.close("/upload/a.bin", &sid).assert_ack(200, None);
    assert_eq!(std::fs::read(s.upload_path("a.bin")).unwrap(), data);
}
