//! A small device-tree source compiler for the tests, so that they read like the upstream
//! `.dtsi` files they imitate (no `dtc` needed). It knows the subset those use: nested nodes
//! with labels, properties with `<cells>` (numbers and `&label` references), `/bits/ 64
//! <cells>`, strings, comma-separated lists of those, empty properties, and comments. Every
//! labelled node gets a `phandle`. The blob is written with `vm-fdt`.

use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

#[derive(Debug)]
enum Cell {
    Number(u64),
    Ref(String),
}

#[derive(Debug)]
enum Chunk {
    Cells { bits: u32, cells: Vec<Cell> },
    Str(String),
}

#[derive(Debug)]
struct Node {
    name: String,
    label: Option<String>,
    props: Vec<(String, Vec<Chunk>)>,
    children: Vec<Node>,
}

/// Compiles `source` (one `/ { ... };` root) into a DTB.
pub fn compile(source: &str) -> Vec<u8> {
    let mut parser = Parser { tokens: tokenize(source), at: 0 };
    parser.expect("/");
    let root = parser.node_body(String::new(), None);
    assert!(parser.at == parser.tokens.len(), "trailing input after the root node");
    let mut labels = Vec::new();
    collect_labels(&root, &mut labels);
    let mut writer = vm_fdt::FdtWriter::new().unwrap();
    write(&mut writer, &root, &labels);
    writer.finish().unwrap()
}

fn collect_labels(node: &Node, labels: &mut Vec<String>) {
    if let Some(label) = &node.label {
        assert!(!labels.contains(label), "label {label} defined twice");
        labels.push(label.clone());
    }
    for child in &node.children {
        collect_labels(child, labels);
    }
}

fn phandle_of(labels: &[String], label: &str) -> u32 {
    labels.iter().position(|l| l == label).unwrap_or_else(|| panic!("no label {label}")) as u32 + 1
}

fn write(writer: &mut vm_fdt::FdtWriter, node: &Node, labels: &[String]) {
    let handle = writer.begin_node(&node.name).unwrap();
    if let Some(label) = &node.label {
        writer.property_phandle(phandle_of(labels, label)).unwrap();
    }
    for (name, chunks) in &node.props {
        let mut bytes = Vec::new();
        for chunk in chunks {
            match chunk {
                Chunk::Str(s) => {
                    bytes.extend_from_slice(s.as_bytes());
                    bytes.push(0);
                }
                Chunk::Cells { bits, cells } => {
                    for cell in cells {
                        let value = match cell {
                            Cell::Number(n) => *n,
                            Cell::Ref(label) => phandle_of(labels, label) as u64,
                        };
                        if *bits == 64 {
                            bytes.extend_from_slice(&value.to_be_bytes());
                        } else {
                            let value = u32::try_from(value).unwrap_or_else(|_| panic!("{value} is not a 32-bit cell"));
                            bytes.extend_from_slice(&value.to_be_bytes());
                        }
                    }
                }
            }
        }
        writer.property(name, &bytes).unwrap();
    }
    for child in &node.children {
        write(writer, child, labels);
    }
    writer.end_node(handle).unwrap();
}

fn tokenize(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            while !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' {
            let start = i;
            i += 1;
            while chars[i] != '"' {
                i += 1;
            }
            i += 1;
            tokens.push(chars[start..i].iter().collect());
        } else if "{}<>;=,:&".contains(c) {
            tokens.push(c.to_string());
            i += 1;
        } else if chars[i..].starts_with(&['/', 'b', 'i', 't', 's', '/']) {
            tokens.push("/bits/".to_string());
            i += 6;
        } else if c == '/' && !chars.get(i + 1).is_some_and(|n| n.is_alphanumeric()) {
            tokens.push("/".to_string());
            i += 1;
        } else {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_-,.@#+".contains(chars[i])) {
                i += 1;
            }
            assert!(i > start, "unexpected character {c:?}");
            tokens.push(chars[start..i].iter().collect());
        }
    }
    tokens
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self, k: usize) -> &str {
        self.tokens.get(self.at + k).map_or("", String::as_str)
    }

    fn next(&mut self) -> String {
        let t = self.tokens.get(self.at).cloned().unwrap_or_else(|| panic!("unexpected end of source"));
        self.at += 1;
        t
    }

    fn expect(&mut self, token: &str) {
        let t = self.next();
        assert_eq!(t, token, "expected {token:?} at token {}", self.at - 1);
    }

    /// After a node's name: `{ properties and children };`.
    fn node_body(&mut self, name: String, label: Option<String>) -> Node {
        self.expect("{");
        let mut node = Node { name, label, props: Vec::new(), children: Vec::new() };
        while self.peek(0) != "}" {
            let (label, name) = if self.peek(1) == ":" {
                let label = self.next();
                self.expect(":");
                (Some(label), self.next())
            } else {
                (None, self.next())
            };
            match self.peek(0) {
                "{" => node.children.push(self.node_body(name, label)),
                "=" => {
                    self.next();
                    let value = self.value();
                    node.props.push((name, value));
                }
                ";" => {
                    self.next();
                    node.props.push((name, vec![]));
                }
                other => panic!("unexpected {other:?} after {name}"),
            }
        }
        self.expect("}");
        self.expect(";");
        node
    }

    /// A property value up to its `;`.
    fn value(&mut self) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        loop {
            let t = self.next();
            if t == "/bits/" {
                let bits: u32 = self.next().parse().unwrap();
                self.expect("<");
                chunks.push(Chunk::Cells { bits, cells: self.cells() });
            } else if t == "<" {
                chunks.push(Chunk::Cells { bits: 32, cells: self.cells() });
            } else if let Some(s) = t.strip_prefix('"') {
                chunks.push(Chunk::Str(s.trim_end_matches('"').to_string()));
            } else {
                panic!("unexpected {t:?} in a property value");
            }
            match self.next().as_str() {
                "," => continue,
                ";" => return chunks,
                other => panic!("unexpected {other:?} after a property value"),
            }
        }
    }

    /// Cells up to `>`.
    fn cells(&mut self) -> Vec<Cell> {
        let mut cells = Vec::new();
        loop {
            let t = self.next();
            match t.as_str() {
                ">" => return cells,
                "&" => cells.push(Cell::Ref(self.next())),
                number => cells.push(Cell::Number(parse_number(number))),
            }
        }
    }
}

fn parse_number(text: &str) -> u64 {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .unwrap_or_else(|_| panic!("{}", format!("not a number: {text:?}")))
}

#[test]
fn compiles_what_the_tests_use() {
    let blob = compile(
        r#"/ {
            model = "t"; /* a comment */
            cpus {
                #address-cells = <1>;
                A: cpu@0 { reg = <0x0>; next = <&B>; // another
                    empty; };
                B: opp-table { opp-hz = /bits/ 64 <998400000>; list = <&A>, <&B 7>; names = "psci", "x"; };
            };
        };"#,
    );
    let fdt = flat_device_tree::Fdt::new(&blob).unwrap();
    let cpu = fdt.find_node("/cpus/cpu@0").unwrap();
    assert_eq!(cpu.property("reg").unwrap().value, [0, 0, 0, 0]);
    assert_eq!(cpu.property("next").unwrap().value, [0, 0, 0, 2]);
    assert_eq!(cpu.property("phandle").unwrap().value, [0, 0, 0, 1]);
    assert!(cpu.property("empty").unwrap().value.is_empty());
    let table = fdt.find_node("/cpus/opp-table").unwrap();
    assert_eq!(table.property("opp-hz").unwrap().value, 998_400_000u64.to_be_bytes());
    assert_eq!(table.property("list").unwrap().value, [0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 7]);
    assert_eq!(table.property("names").unwrap().value, b"psci\0x\0");
    assert_eq!(fdt.find_node("/cpus").unwrap().property("#address-cells").unwrap().value, [0, 0, 0, 1]);
}
