package vectors

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// TestSchemaAgreesWithVectors holds docs/eie.schema.json to the verifier's verdicts: the
// claims of every valid vector satisfy it, and every vector refused for a missing member or
// a bad value breaks it, except where the rule is beyond a schema (exp after iat).
func TestSchemaAgreesWithVectors(t *testing.T) {
	path := filepath.Join(Dir(), "..", "..", "docs", "eie.schema.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("eie.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	schema, err := c.Compile("eie.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Envelopes()
	if err != nil {
		t.Fatal(err)
	}
	beyondSchema := map[string]bool{"exp-before-iat": true}
	checked := 0
	for _, v := range f.Vectors {
		claims, err := jsonschema.UnmarshalJSON(bytes.NewReader(v.Claims))
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		verr := schema.Validate(claims)
		switch {
		case v.Valid:
			checked++
			if verr != nil {
				t.Errorf("%s: a valid envelope breaks the schema: %v", v.Name, verr)
			}
		case (v.Reason == "missing_member" || v.Reason == "bad_value" || v.Name == "exp-as-string") && !beyondSchema[v.Name]:
			checked++
			if verr == nil {
				t.Errorf("%s: refused by Mandate (%s) but the schema accepts it", v.Name, v.Reason)
			}
		}
	}
	if checked < 25 {
		t.Errorf("only %d vectors checked against the schema", checked)
	}
}
