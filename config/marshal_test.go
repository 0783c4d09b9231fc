package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// Marshal returns s as plain TOML that Resolve reads back into the same
// Spec, every key written. A spec that would not read back the same (an
// invalid value, a contradiction, a Unix socket endpoint) is an error.
func Marshal(s Spec) ([]byte, error) {
	var b strings.Builder
	writeTOML(&b, &s, nil)
	text := b.String()
	r := newResolver()
	r.loadFile("spec", []byte(text))
	r.finish(true)
	if len(r.errs) > 0 {
		return nil, fmt.Errorf("config: cannot marshal spec: %w", errors.Join(r.errs...))
	}
	if !specEqual(r.spec, s) {
		for _, k := range keyTable() {
			if a, b := literal(k.get(&r.spec)), literal(k.get(&s)); a != b {
				return nil, fmt.Errorf("config: cannot marshal spec: %s = %s reads back as %s", k.name, b, a)
			}
		}
		return nil, errors.New("config: cannot marshal spec: it does not read back the same")
	}
	return []byte(text), nil
}

// specEqual compares specs, treating nil and empty slices alike.
func specEqual(a, b Spec) bool {
	return reflect.DeepEqual(normalize(a), normalize(b))
}

// normalize makes the empty lists of s nil.
func normalize(s Spec) Spec {
	v := reflect.ValueOf(&s).Elem()
	for _, k := range keyTable() {
		if f := v.FieldByIndex(k.field); k.kind == kList && f.Len() == 0 {
			f.SetZero()
		}
	}
	return s
}
