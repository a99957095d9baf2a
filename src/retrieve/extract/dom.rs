//! The parser's tree, with a cap on how deep it may nest.
//!
//! html5ever's tree builder scans its stack of open elements for most tags, so
//! its time grows with the square of the nesting depth and nothing bounds that
//! depth: a few hundred kilobytes of `<div>` cost minutes of CPU. Browsers stop
//! at 512 levels; so does this sink, which measures each element it is asked to
//! insert and flags the document once one sits deeper. The caller feeds the page
//! in pieces and stops at the flag, so the work done is bounded by the cap.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use html5ever::interface::{ElementFlags, NodeOrText, QuirksMode, TreeSink};
use html5ever::tendril::StrTendril;
use html5ever::{Attribute, ExpandedName, QualName};
use markup5ever_rcdom::{Handle, Node, NodeData, RcDom};

/// The deepest an element may sit (Chromium's and WebKit's limit).
pub(super) const MAX_DEPTH: usize = 512;

pub(super) struct CappedDom {
    dom: RcDom,
    /// Set once an element was inserted deeper than [`MAX_DEPTH`].
    too_deep: Rc<Cell<bool>>,
    /// Each template's contents (a fragment of its own, without a parent) to the
    /// template, so nesting templates cannot restart the count.
    templates: RefCell<HashMap<*const Node, Handle>>,
}

impl CappedDom {
    pub(super) fn new(too_deep: Rc<Cell<bool>>) -> CappedDom {
        CappedDom {
            dom: RcDom::default(),
            too_deep,
            templates: RefCell::default(),
        }
    }

    /// Flags `child` if it is an element that would sit below `parent` too deep.
    fn check(&self, parent: &Handle, child: &NodeOrText<Handle>) {
        if let NodeOrText::AppendNode(node) = child
            && matches!(node.data, NodeData::Element { .. })
            && self.depth(parent) >= MAX_DEPTH
        {
            self.too_deep.set(true);
        }
    }

    /// How many ancestors `node` has, counted up to one past the cap.
    fn depth(&self, node: &Handle) -> usize {
        let mut depth = 0;
        let mut current = node.clone();
        while depth <= MAX_DEPTH {
            let parent = current.parent.take();
            current.parent.set(parent.clone());
            let up = match parent.and_then(|weak| weak.upgrade()) {
                Some(parent) => parent,
                None => match self.templates.borrow().get(&Rc::as_ptr(&current)) {
                    Some(template) => template.clone(),
                    None => break,
                },
            };
            depth += 1;
            current = up;
        }
        depth
    }
}

// === impl TreeSink for CappedDom: RcDom's, after the check ===

impl TreeSink for CappedDom {
    type Handle = Handle;
    type Output = RcDom;
    type ElemName<'a> = ExpandedName<'a>;

    fn finish(self) -> RcDom {
        self.dom
    }

    fn append(&self, parent: &Handle, child: NodeOrText<Handle>) {
        self.check(parent, &child);
        self.dom.append(parent, child);
    }

    fn append_before_sibling(&self, sibling: &Handle, child: NodeOrText<Handle>) {
        self.check(sibling, &child);
        self.dom.append_before_sibling(sibling, child);
    }

    fn append_based_on_parent_node(
        &self,
        element: &Handle,
        prev_element: &Handle,
        child: NodeOrText<Handle>,
    ) {
        self.check(element, &child);
        self.check(prev_element, &child);
        self.dom
            .append_based_on_parent_node(element, prev_element, child);
    }

    fn get_template_contents(&self, target: &Handle) -> Handle {
        let contents = self.dom.get_template_contents(target);
        self.templates
            .borrow_mut()
            .insert(Rc::as_ptr(&contents), target.clone());
        contents
    }

    fn parse_error(&self, msg: Cow<'static, str>) {
        self.dom.parse_error(msg);
    }

    fn get_document(&self) -> Handle {
        self.dom.get_document()
    }

    fn elem_name<'a>(&'a self, target: &'a Handle) -> ExpandedName<'a> {
        self.dom.elem_name(target)
    }

    fn create_element(&self, name: QualName, attrs: Vec<Attribute>, flags: ElementFlags) -> Handle {
        self.dom.create_element(name, attrs, flags)
    }

    fn create_comment(&self, text: StrTendril) -> Handle {
        self.dom.create_comment(text)
    }

    fn create_pi(&self, target: StrTendril, data: StrTendril) -> Handle {
        self.dom.create_pi(target, data)
    }

    fn append_doctype_to_document(
        &self,
        name: StrTendril,
        public_id: StrTendril,
        system_id: StrTendril,
    ) {
        self.dom
            .append_doctype_to_document(name, public_id, system_id);
    }

    fn same_node(&self, x: &Handle, y: &Handle) -> bool {
        self.dom.same_node(x, y)
    }

    fn set_quirks_mode(&self, mode: QuirksMode) {
        self.dom.set_quirks_mode(mode);
    }

    fn add_attrs_if_missing(&self, target: &Handle, attrs: Vec<Attribute>) {
        self.dom.add_attrs_if_missing(target, attrs);
    }

    fn remove_from_parent(&self, target: &Handle) {
        self.dom.remove_from_parent(target);
    }

    fn reparent_children(&self, node: &Handle, new_parent: &Handle) {
        self.dom.reparent_children(node, new_parent);
    }

    fn is_mathml_annotation_xml_integration_point(&self, handle: &Handle) -> bool {
        self.dom.is_mathml_annotation_xml_integration_point(handle)
    }

    fn maybe_clone_an_option_into_selectedcontent(&self, option: &Handle) {
        self.dom.maybe_clone_an_option_into_selectedcontent(option);
    }
}
