//! libvirt XML, written from typed structs with a real XML writer (never by
//! pasting request strings into a template) and read back the same way.

pub mod domain;
pub mod metadata;

pub use domain::{DomainSpec, FilesystemMount, NetworkInterface};
pub use metadata::{METADATA_PREFIX, METADATA_URI, MetadataError};

use quick_xml::Writer;
use std::io;

/// An XML writer over a byte buffer, indented for readable golden files.
pub(crate) type XmlWriter = Writer<Vec<u8>>;

/// Writes `<name>text</name>`.
pub(crate) fn text_element(w: &mut XmlWriter, name: &str, text: &str) -> io::Result<()> {
    w.create_element(name)
        .write_text_content(quick_xml::events::BytesText::new(text))?;
    Ok(())
}

/// Runs `body` on a fresh indented writer and returns the document.
pub(crate) fn render(body: impl FnOnce(&mut XmlWriter) -> io::Result<()>) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail.
    body(&mut w).expect("writing XML into memory");
    String::from_utf8(w.into_inner()).expect("the XML writer emits UTF-8")
}
