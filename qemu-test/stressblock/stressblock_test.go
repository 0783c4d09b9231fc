package stressblock

import "testing"

// TestCheck: a block made for (run, index) verifies as itself and as
// nothing else, and any flipped byte is caught.
func TestCheck(t *testing.T) {
	id := RunID("a")
	b := Make(id, 7, 9, 123)
	if why := Check(b, id, 7); why != "" {
		t.Fatalf("fresh block: %s", why)
	}
	for _, tc := range []struct {
		name  string
		id    ID
		index uint64
		mut   func([]byte)
	}{
		{"other index", id, 8, nil},
		{"other run", RunID("b"), 7, nil},
		{"magic", id, 7, func(b []byte) { b[0] ^= 1 }},
		{"payload", id, 7, func(b []byte) { b[100] ^= 1 }},
		{"checksum", id, 7, func(b []byte) { b[Size-1] ^= 1 }},
		{"short", id, 7, func(b []byte) {}},
	} {
		c := append([]byte(nil), b...)
		if tc.mut != nil {
			tc.mut(c)
		}
		if tc.name == "short" {
			c = c[:Size-1]
		}
		if why := Check(c, tc.id, tc.index); why == "" {
			t.Errorf("%s: Check accepted a wrong block", tc.name)
		}
	}
}
