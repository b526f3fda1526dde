// A small Markdown renderer for model answers. Everything is escaped first and only the markup this
// module writes is HTML: a model's "<script>" stays text, and links are made only for http(s) URLs.

export function escapeHtml(text) {
  return text
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

function emphasis(escaped) {
  return escaped
    .replace(/\*\*(\S(?:.*?\S)?)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*\w])\*(\S(?:.*?\S)?)\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|\W)_(\S(?:.*?\S)?)_(?!\w)/g, "$1<em>$2</em>")
    .replace(
      /\[([^\]]+)\]\((https?:\/\/[^\s()]+)\)/g,
      '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>',
    );
}

// Inline markup of one line of text: `code` (taken as is), **bold**, *italic*, [links](http or https URLs only).
function renderInline(text) {
  return text
    .split(/(`[^`\n]+`)/)
    .map((part, i) =>
      i % 2 ? `<code>${escapeHtml(part.slice(1, -1))}</code>` : emphasis(escapeHtml(part)),
    )
    .join("");
}

const LIST_ITEM = /^\s*(?:([-*+])|(\d+)[.)])\s+(.*)$/;

function renderBlocks(text) {
  const out = [];
  let paragraph = [];
  let list = null; // { tag, items }
  const flushParagraph = () => {
    if (paragraph.length) out.push(`<p>${paragraph.map(renderInline).join("<br>")}</p>`);
    paragraph = [];
  };
  const flushList = () => {
    if (list) {
      const items = list.items.map((item) => `<li>${renderInline(item)}</li>`).join("");
      out.push(`<${list.tag}>${items}</${list.tag}>`);
    }
    list = null;
  };
  for (const line of text.split("\n")) {
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const item = LIST_ITEM.exec(line);
    if (!line.trim()) {
      flushParagraph();
      flushList();
    } else if (heading) {
      flushParagraph();
      flushList();
      const level = heading[1].length;
      out.push(`<h${level}>${renderInline(heading[2])}</h${level}>`);
    } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flushParagraph();
      flushList();
      out.push("<hr>");
    } else if (line.startsWith(">")) {
      flushParagraph();
      flushList();
      out.push(`<blockquote>${renderInline(line.replace(/^>\s?/, ""))}</blockquote>`);
    } else if (item) {
      flushParagraph();
      const tag = item[1] ? "ul" : "ol";
      if (list && list.tag !== tag) flushList();
      list ??= { tag, items: [] };
      list.items.push(item[3]);
    } else {
      flushList();
      paragraph.push(line);
    }
  }
  flushParagraph();
  flushList();
  return out.join("");
}

// The HTML of `source`: fenced code blocks (an unclosed one runs to the end, as while it streams) and
// paragraphs, headings, lists, quotes and rules between them.
export function renderMarkdown(source) {
  const out = [];
  const fence = /^```([\w+.-]*)[^\n]*\n([\s\S]*?)(?:^```[^\n]*$|(?![\s\S]))/gm;
  let last = 0;
  for (const match of source.matchAll(fence)) {
    out.push(renderBlocks(source.slice(last, match.index)));
    const lang = match[1] ? ` class="language-${escapeHtml(match[1])}"` : "";
    out.push(`<pre><code${lang}>${escapeHtml(match[2].replace(/\n$/, ""))}</code></pre>`);
    last = match.index + match[0].length;
  }
  out.push(renderBlocks(source.slice(last)));
  return out.join("");
}
