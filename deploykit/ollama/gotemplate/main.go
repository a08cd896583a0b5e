// gotemplate renders an Ollama TEMPLATE (Go text/template) with Ollama's template data
// model, so deploykit's tests can prove a Modelfile TEMPLATE renders conversations exactly as
// the model's Jinja chat template does. Standard library only.
//
// It emulates template/template.go of Ollama >= 0.14 (https://github.com/ollama/ollama):
//   - text/template with Option("missingkey=zero") and the functions json, currentDate,
//     yesterdayDate (the date is fixed by the request, so both sides of a parity test agree);
//   - collate: consecutive messages of the same role are merged with "\n\n" (tool messages are
//     not), and every system message's content is joined with "\n\n" into .System;
//   - the template-side data types: templateTools / templateArgs / templateProperties print as
//     JSON, while a tool's .Function has no String method and prints as a Go struct.
//
// It also reports the tool-call tag Ollama's output parser derives from the template
// (tools/template.go parseTag): the first text inside the first {{ if ... .ToolCalls ... }}
// block, trimmed and cut before "{"; "{" when there is none. And the thinking tags Ollama's
// thinking parser infers from it (thinking/template.go InferTags): for each .Thinking inside a
// range over .Messages, the trimmed first and last text of the nearest enclosing list (the
// last such .Thinking wins).
//
// Input (stdin): {"template": "...", "cases": [{"messages": [...], "tools": [...],
// "think": true|false|null, "date": "2006-01-02"}]} with messages and tools in the shape of
// Ollama's /api/chat request. Output (stdout): {"tag": "...", "think_tags": ["open", "close"],
// "results": [{"output": "..."} | {"error": "..."}, ...]}, one result per case. A template that does not parse exits 2 with
// the error on stderr.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// PropertyType is a JSON-schema type: one name prints as a string, several as a list.
type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*pt = PropertyType{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	*pt = l
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

func (pt PropertyType) String() string {
	if len(pt) == 1 {
		return pt[0]
	}
	return fmt.Sprint([]string(pt))
}

type ToolProperty struct {
	AnyOf       []ToolProperty     `json:"anyOf,omitempty"`
	Type        PropertyType       `json:"type,omitempty"`
	Items       any                `json:"items,omitempty"`
	Description string             `json:"description,omitempty"`
	Enum        []any              `json:"enum,omitempty"`
	Properties  templateProperties `json:"properties,omitempty"`
}

// ToTypeScriptType is Ollama's api.ToolProperty method (api/types.go), callable from a
// template as {{ $prop.ToTypeScriptType }}: anyOf alternatives or the JSON types, each
// mapped to a TypeScript type, joined with " | "; no type is "any".
func (tp ToolProperty) ToTypeScriptType() string {
	var parts []string
	if len(tp.AnyOf) > 0 {
		for _, alt := range tp.AnyOf {
			parts = append(parts, alt.ToTypeScriptType())
		}
		return strings.Join(parts, " | ")
	}
	if len(tp.Type) == 0 {
		return "any"
	}
	for _, name := range tp.Type {
		parts = append(parts, typeScriptName(name))
	}
	return strings.Join(parts, " | ")
}

// typeScriptName maps one JSON-schema type name as Ollama's mapToTypeScriptType does.
func typeScriptName(jsonType string) string {
	switch jsonType {
	case "string", "boolean", "null":
		return jsonType
	case "number", "integer":
		return "number"
	case "array":
		return "any[]"
	case "object":
		return "Record<string, any>"
	}
	return "any"
}

type templateProperties map[string]ToolProperty

func (p templateProperties) String() string { return jsonString(p) }

type templateParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

// templateToolFunction has no String method: {{ .Function }} prints Go struct syntax
// (Ollama >= 0.14, bug #14601); {{ json .Function }} prints JSON.
type templateToolFunction struct {
	Name        string             `json:"name"`
	Description string             `json:"description"`
	Parameters  templateParameters `json:"parameters"`
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

type templateTools []templateTool

func (t templateTools) String() string { return jsonString(t) }

type templateArgs map[string]any

func (a templateArgs) String() string { return jsonString(a) }

type templateToolCallFunction struct {
	Index     int          `json:"index"`
	Name      string       `json:"name"`
	Arguments templateArgs `json:"arguments"`
}

type templateToolCall struct {
	ID       string                   `json:"id,omitempty"`
	Function templateToolCallFunction `json:"function"`
}

type templateMessage struct {
	Role       string             `json:"role"`
	Content    string             `json:"content"`
	Thinking   string             `json:"thinking,omitempty"`
	Images     []string           `json:"images,omitempty"`
	ToolCalls  []templateToolCall `json:"tool_calls,omitempty"`
	ToolName   string             `json:"tool_name,omitempty"`
	ToolCallID string             `json:"tool_call_id,omitempty"`
}

type renderCase struct {
	Messages []templateMessage `json:"messages"`
	Tools    templateTools     `json:"tools"`
	Think    *bool             `json:"think"`
	Date     string            `json:"date"`
}

type request struct {
	Template string       `json:"template"`
	Cases    []renderCase `json:"cases"`
}

type response struct {
	Tag       string    `json:"tag"`
	ThinkTags [2]string `json:"think_tags"`
	Results   []result  `json:"results"`
}

type result struct {
	Output *string `json:"output,omitempty"`
	Error  string  `json:"error,omitempty"`
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// collate is Ollama's: merge consecutive same-role messages (not tool ones), gather systems.
func collate(msgs []templateMessage) (string, []*templateMessage) {
	var system []string
	var collated []*templateMessage
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func render(src string, c renderCase) (string, error) {
	today := time.Now()
	if c.Date != "" {
		d, err := time.Parse("2006-01-02", c.Date)
		if err != nil {
			return "", err
		}
		today = d
	}
	funcs := template.FuncMap{
		"json":          jsonString,
		"currentDate":   func(...any) string { return today.Format("2006-01-02") },
		"yesterdayDate": func(...any) string { return today.AddDate(0, 0, -1).Format("2006-01-02") },
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(src)
	if err != nil {
		return "", err
	}
	system, messages := collate(c.Messages)
	for i := range messages {
		for j := range messages[i].ToolCalls {
			messages[i].ToolCalls[j].Function.Index = j
		}
	}
	var tools templateTools
	if len(c.Tools) > 0 {
		tools = c.Tools
	}
	think := c.Think != nil && *c.Think
	var b bytes.Buffer
	err = tmpl.Execute(&b, map[string]any{
		"System":     system,
		"Messages":   messages,
		"Tools":      tools,
		"Response":   "",
		"Think":      think,
		"ThinkLevel": "",
		"IsThinkSet": c.Think != nil,
	})
	return b.String(), err
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	if !strings.Contains(req.Template, ".Messages") {
		fmt.Fprintln(os.Stderr, "template does not use .Messages (legacy templates are not emulated)")
		os.Exit(2)
	}
	parsed, err := template.New("").Option("missingkey=zero").Funcs(template.FuncMap{
		"json": jsonString, "currentDate": time.Now, "yesterdayDate": time.Now,
	}).Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template error:", err)
		os.Exit(2)
	}
	out := make([]result, 0, len(req.Cases))
	for _, c := range req.Cases {
		s, err := render(req.Template, c)
		if err != nil {
			out = append(out, result{Error: err.Error()})
		} else {
			out = append(out, result{Output: &s})
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	root := parsed.Tree.Root
	resp := response{Tag: toolTag(root), ThinkTags: thinkTags(root), Results: out}
	if err := enc.Encode(resp); err != nil {
		os.Exit(1)
	}
}

// toolTag is the tag Ollama's tool-call parser looks for in the model's output.
func toolTag(root *parse.ListNode) string {
	block := findToolCallsIf(root.Nodes)
	if block == nil {
		return "{"
	}
	text := firstText(block.List.Nodes)
	if text == nil {
		return "{"
	}
	tag := strings.TrimSpace(string(text.Text))
	tag = strings.ReplaceAll(tag, "\r\n", "\n")
	tag = strings.Split(tag, "{")[0]
	if tag == "" {
		return "{"
	}
	return tag
}

// findToolCallsIf: the first if-node with .ToolCalls as a direct argument of its pipeline.
func findToolCallsIf(nodes []parse.Node) *parse.IfNode {
	mentions := func(n *parse.IfNode) bool {
		for _, cmd := range n.Pipe.Cmds {
			for _, arg := range cmd.Args {
				if f, ok := arg.(*parse.FieldNode); ok {
					for _, id := range f.Ident {
						if id == "ToolCalls" {
							return true
						}
					}
				}
			}
		}
		return false
	}
	for _, node := range nodes {
		var lists []*parse.ListNode
		switch n := node.(type) {
		case *parse.IfNode:
			if mentions(n) {
				return n
			}
			lists = []*parse.ListNode{n.List, n.ElseList}
		case *parse.ListNode:
			lists = []*parse.ListNode{n}
		case *parse.RangeNode:
			lists = []*parse.ListNode{n.List, n.ElseList}
		case *parse.WithNode:
			lists = []*parse.ListNode{n.List, n.ElseList}
		}
		for _, l := range lists {
			if l != nil {
				if found := findToolCallsIf(l.Nodes); found != nil {
					return found
				}
			}
		}
	}
	return nil
}

// firstText: depth-first first text node, giving up at the first action or finished block.
func firstText(nodes []parse.Node) *parse.TextNode {
	for _, node := range nodes {
		switch n := node.(type) {
		case *parse.TextNode:
			return n
		case *parse.ActionNode:
			return nil
		case *parse.ListNode:
			if t := firstText(n.Nodes); t != nil {
				return t
			}
		case *parse.IfNode, *parse.RangeNode, *parse.WithNode:
			var b *parse.BranchNode
			switch m := n.(type) {
			case *parse.IfNode:
				b = &m.BranchNode
			case *parse.RangeNode:
				b = &m.BranchNode
			case *parse.WithNode:
				b = &m.BranchNode
			}
			if t := firstText(b.List.Nodes); t != nil {
				return t
			}
			if b.ElseList != nil {
				if t := firstText(b.ElseList.Nodes); t != nil {
					return t
				}
			}
			return nil
		}
	}
	return nil
}

// children: the nodes below n that the thinking-tag walk visits, in order.
func children(n parse.Node) []parse.Node {
	var out []parse.Node
	branch := func(b *parse.BranchNode) {
		if b.Pipe != nil {
			out = append(out, b.Pipe)
		}
		if b.List != nil {
			out = append(out, b.List)
		}
		if b.ElseList != nil {
			out = append(out, b.ElseList)
		}
	}
	switch x := n.(type) {
	case *parse.ListNode:
		out = append(out, x.Nodes...)
	case *parse.ActionNode:
		out = append(out, x.Pipe)
	case *parse.IfNode:
		branch(&x.BranchNode)
	case *parse.RangeNode:
		branch(&x.BranchNode)
	case *parse.WithNode:
		branch(&x.BranchNode)
	case *parse.TemplateNode:
		if x.Pipe != nil {
			out = append(out, x.Pipe)
		}
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			out = append(out, c)
		}
	case *parse.CommandNode:
		out = append(out, x.Args...)
	}
	return out
}

// mentionsField: a field node named field (first identifier) anywhere under n.
func mentionsField(n parse.Node, field string) bool {
	if f, ok := n.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == field {
		return true
	}
	for _, c := range children(n) {
		if mentionsField(c, field) {
			return true
		}
	}
	return false
}

// thinkTags: the opening and closing thinking tags Ollama infers from the template.
func thinkTags(root *parse.ListNode) [2]string {
	var tags [2]string
	var path []parse.Node
	var walk func(n parse.Node)
	walk = func(n parse.Node) {
		if n == nil {
			return
		}
		path = append(path, n)
		if f, ok := n.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == "Thinking" {
			var rng *parse.RangeNode
			for i := len(path) - 1; i >= 0 && rng == nil; i-- {
				rng, _ = path[i].(*parse.RangeNode)
			}
			if rng != nil && rng.Pipe != nil && mentionsField(rng.Pipe, "Messages") {
				for i := len(path) - 1; i >= 0; i-- {
					if l, ok := path[i].(*parse.ListNode); ok {
						if t, ok := l.Nodes[0].(*parse.TextNode); ok {
							tags[0] = strings.TrimSpace(t.String())
						}
						if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
							tags[1] = strings.TrimSpace(t.String())
						}
						break
					}
				}
			}
		}
		for _, c := range children(n) {
			walk(c)
		}
		path = path[:len(path)-1]
	}
	walk(root)
	return tags
}
