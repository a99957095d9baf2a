//! The grounding prompt: retrieved passages rendered into a system message by a
//! template from `prompts/` (minijinja), one per language — Chinese and English —
//! chosen by the question's script. Templates are read at start-up, so operators
//! edit them without a rebuild; their version (a hash of their text) belongs in the
//! cache key, so a changed template never serves answers built with the old one.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::Environment;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The language a prompt is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    const ALL: [Lang; 2] = [Lang::Zh, Lang::En];

    fn file(self) -> &'static str {
        match self {
            Lang::Zh => "rag.zh.j2",
            Lang::En => "rag.en.j2",
        }
    }

    /// Chinese when at least a fifth of the question's letters are CJK ideographs
    /// (product names and codes in Latin letters are common in Chinese questions).
    pub fn of(question: &str) -> Lang {
        let share = ragway_engine::ideograph_share(question);
        if share >= 0.2 { Lang::Zh } else { Lang::En }
    }
}

/// One passage as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct PassageView<'a> {
    /// Its number in the prompt, from 1: what the answer cites.
    pub n: usize,
    pub title: &'a str,
    pub headings: &'a [String],
    pub source: &'a str,
    pub text: &'a str,
}

/// The templates, compiled.
pub struct Prompts {
    env: Environment<'static>,
    version: String,
}

impl Prompts {
    /// The templates shipped in the binary (the `prompts/` of this source tree).
    pub fn builtin() -> Prompts {
        let sources = BTreeMap::from([
            (Lang::Zh, include_str!("../../prompts/rag.zh.j2").to_owned()),
            (Lang::En, include_str!("../../prompts/rag.en.j2").to_owned()),
        ]);
        // The shipped templates are tested: they compile.
        Prompts::compile(sources).expect("built-in templates compile")
    }

    /// Reads `rag.zh.j2` and `rag.en.j2` from `dir`.
    pub fn load(dir: &Path) -> Result<Prompts, String> {
        let mut sources = BTreeMap::new();
        for lang in Lang::ALL {
            let path = dir.join(lang.file());
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            sources.insert(lang, text);
        }
        Prompts::compile(sources)
    }

    fn compile(sources: BTreeMap<Lang, String>) -> Result<Prompts, String> {
        let mut hash = Sha256::new();
        let mut env = Environment::new();
        for (lang, text) in sources {
            hash.update(lang.file().as_bytes());
            hash.update([0]);
            hash.update(text.as_bytes());
            hash.update([0]);
            env.add_template_owned(lang.file(), text)
                .map_err(|e| format!("{}: {e}", lang.file()))?;
        }
        let digest = hash.finalize();
        let version = crate::encode::hex(&digest[..6]);
        Ok(Prompts { env, version })
    }

    /// Changes whenever any template's text does.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The system message grounding `question` in `passages`, in the question's
    /// language.
    pub fn render(&self, question: &str, passages: &[PassageView<'_>]) -> Result<String, String> {
        self.render_in(Lang::of(question), question, passages)
    }

    /// Like [`Prompts::render`], in a given language.
    pub fn render_in(
        &self,
        lang: Lang,
        question: &str,
        passages: &[PassageView<'_>],
    ) -> Result<String, String> {
        let template = self
            .env
            .get_template(lang.file())
            .map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! { passages, question })
            .map_err(|e| format!("{}: {e}", lang.file()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_picks_the_language() {
        assert_eq!(Lang::of("如何开启 Wi-Fi 6 的 MLO 功能？"), Lang::Zh);
        assert_eq!(Lang::of("How do I enable search?"), Lang::En);
        assert_eq!(Lang::of("12345"), Lang::En);
    }

    #[test]
    fn passages_are_numbered_with_their_headings() {
        let prompts = Prompts::builtin();
        let headings = vec!["用户手册".to_owned(), "退货".to_owned()];
        let passages = [PassageView {
            n: 1,
            title: "售后政策",
            headings: &headings,
            source: "policy.md",
            text: "签收后七天内可申请退货。",
        }];
        let zh = prompts.render("怎么退货？", &passages).unwrap();
        assert!(zh.contains("请只根据下面的参考资料"), "{zh}");
        assert!(
            zh.contains("[1] 售后政策 — 用户手册 › 退货\n签收后七天内可申请退货。"),
            "{zh}"
        );
        let en = prompts
            .render("How do I return an item?", &passages)
            .unwrap();
        assert!(en.starts_with("Answer the user's question"), "{en}");
    }

    #[test]
    fn the_version_follows_the_text() {
        let dir = std::env::temp_dir().join(format!("ragway-prompts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("rag.zh.j2"),
            include_str!("../../prompts/rag.zh.j2"),
        )
        .unwrap();
        std::fs::write(
            dir.join("rag.en.j2"),
            include_str!("../../prompts/rag.en.j2"),
        )
        .unwrap();
        let same = Prompts::load(&dir).unwrap();
        assert_eq!(same.version(), Prompts::builtin().version());
        std::fs::write(dir.join("rag.en.j2"), "Use these: {{ passages | length }}").unwrap();
        let edited = Prompts::load(&dir).unwrap();
        assert_ne!(edited.version(), same.version());
        std::fs::write(dir.join("rag.en.j2"), "{% for %}").unwrap();
        let Err(error) = Prompts::load(&dir) else {
            panic!("a broken template loads");
        };
        assert!(error.contains("rag.en.j2"), "{error}");
    }
}
