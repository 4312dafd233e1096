package main

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// Every key the config accepts is documented in the README (the users'
// contract): a leaf key as `key` in a table row, a table as a [table]
// heading. A key added to the code without docs fails here.
func TestREADMEDocumentsEveryConfigKey(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	must(t, err)
	doc := string(readme)
	keys := 0
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Map || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct {
			return
		}
		for i := range typ.NumField() {
			f := typ.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if key == "" || key == "-" {
				continue
			}
			keys++
			documented := strings.Contains(doc, "`"+key+"`") ||
				strings.Contains(doc, "["+key+"]") || strings.Contains(doc, "["+key+".") ||
				strings.Contains(doc, "."+key+"]")
			if !documented {
				t.Errorf("config key %s%s is not documented in README.md", path, key)
			}
			walk(f.Type, path+key+".")
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	if keys < 40 { // the walk itself must reach the nested tables
		t.Fatalf("walked %d config keys, want every one", keys)
	}
}
