// vapcheck decides admission requests with the API server's own ValidatingAdmissionPolicy code
// (k8s.io/apiserver, the version of the local control plane), offline: the chart's policies are
// tested request by request without a cluster (tests/chart/test_admission.py).
//
// It reads one JSON document on stdin:
//
//	{"manifests": "<helm template output>", "namespaces": [Namespace...], "requests": [request...]}
//
// where a request is {"name", "user", "groups", "operation", "group", "version", "resource",
// "subResource", "namespace", "objectName", "object", "oldObject"}, and prints one JSON line per
// request: {"name", "allowed", "message"}. Policies and bindings are defaulted as the API server
// defaults them on create; expressions are compiled as for a new policy.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/policy/generic"
	"k8s.io/apiserver/pkg/admission/plugin/policy/matching"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/cel/environment"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
)

type input struct {
	Manifests  string             `json:"manifests"`
	Namespaces []corev1.Namespace `json:"namespaces"`
	Requests   []request          `json:"requests"`
}

type request struct {
	Name        string                 `json:"name"`
	User        string                 `json:"user"`
	Groups      []string               `json:"groups"`
	Operation   string                 `json:"operation"`
	Group       string                 `json:"group"`
	Version     string                 `json:"version"`
	Resource    string                 `json:"resource"`
	SubResource string                 `json:"subResource"`
	Namespace   string                 `json:"namespace"`
	ObjectName  string                 `json:"objectName"`
	Object      map[string]interface{} `json:"object"`
	OldObject   map[string]interface{} `json:"oldObject"`
}

type decision struct {
	Name    string `json:"name"`
	Allowed bool   `json:"allowed"`
	Message string `json:"message"`
}

type logger struct{}

func (logger) Logf(format string, args ...any)   {}
func (logger) Errorf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (logger) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(2)
}
func (logger) Helper() {}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "vapcheck:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	var given input
	if err := json.NewDecoder(in).Decode(&given); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	policies, err := policiesIn(given.Manifests)
	if err != nil {
		return err
	}
	if len(policies) == 0 {
		return errors.New("the manifests hold no ValidatingAdmissionPolicy")
	}
	var namespaces []runtime.Object
	for i := range given.Namespaces {
		given.Namespaces[i].TypeMeta = metav1.TypeMeta{}
		namespaces = append(namespaces, &given.Namespaces[i])
	}
	// Namespaces are there before the informers start, so they are listed by the time the
	// plugin is ready.
	tester, cancel, err := generic.NewPolicyTestContext(
		logger{},
		validating.NewValidatingAdmissionPolicyAccessor,
		validating.NewValidatingAdmissionPolicyBindingAccessor,
		compilePolicy,
		func(a authorizer.Authorizer, m *matching.Matcher, _ kubernetes.Interface) generic.Dispatcher[validating.PolicyHook] {
			return validating.NewDispatcher(a, generic.NewPolicyMatcher(m))
		},
		namespaces,
		[]meta.RESTMapping{{
			Resource:         schema.GroupVersionResource{Version: "v1", Resource: "namespaces"},
			GroupVersionKind: schema.GroupVersionKind{Version: "v1", Kind: "Namespace"},
			Scope:            meta.RESTScopeRoot,
		}},
	)
	if err != nil {
		return err
	}
	defer cancel()
	if err := tester.Start(); err != nil {
		return err
	}
	if err := tester.UpdateAndWait(policies...); err != nil {
		return err
	}
	encoder := json.NewEncoder(out)
	for _, r := range given.Requests {
		allowed, message, err := decide(tester, r)
		if err != nil {
			return fmt.Errorf("request %q: %w", r.Name, err)
		}
		if err := encoder.Encode(decision{r.Name, allowed, message}); err != nil {
			return err
		}
	}
	return nil
}

func decide(tester *generic.PolicyTestContext[*validating.Policy, *validating.PolicyBinding, validating.Validator], r request) (bool, string, error) {
	var object, old runtime.Object
	gvk := schema.GroupVersionKind{}
	if r.Object != nil {
		u := &unstructured.Unstructured{Object: r.Object}
		object, gvk = u, u.GroupVersionKind()
	}
	if r.OldObject != nil {
		u := &unstructured.Unstructured{Object: r.OldObject}
		old = u
		if gvk.Empty() {
			gvk = u.GroupVersionKind()
		}
	}
	if object == nil && old == nil {
		return false, "", errors.New("neither object nor oldObject")
	}
	version := r.Version
	if version == "" {
		version = "v1"
	}
	attributes := admission.NewAttributesRecord(object, old, gvk, r.Namespace, r.ObjectName,
		schema.GroupVersionResource{Group: r.Group, Version: version, Resource: r.Resource},
		r.SubResource, admission.Operation(r.Operation), nil, false,
		&user.DefaultInfo{Name: r.User, Groups: r.Groups})
	// A plugin not ready yet (informers still syncing) refuses everything: wait it out.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := tester.Plugin.Dispatch(context.Background(), attributes, admission.NewObjectInterfacesFromScheme(scheme.Scheme))
		if err == nil {
			return true, "", nil
		}
		if !bytes.Contains([]byte(err.Error()), []byte("not yet ready to handle request")) || time.Now().After(deadline) {
			return false, err.Error(), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// policiesIn returns the ValidatingAdmissionPolicies and bindings of rendered manifests,
// defaulted as the API server defaults them on create.
func policiesIn(manifests string) ([]runtime.Object, error) {
	var found []runtime.Object
	decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader([]byte(manifests)), 4096)
	for {
		var doc map[string]interface{}
		if err := decoder.Decode(&doc); errors.Is(err, io.EOF) {
			return found, nil
		} else if err != nil {
			return nil, err
		}
		switch doc["kind"] {
		case "ValidatingAdmissionPolicy":
			policy := &admissionregistrationv1.ValidatingAdmissionPolicy{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(doc, policy); err != nil {
				return nil, err
			}
			policy.TypeMeta = metav1.TypeMeta{}
			if policy.Spec.MatchConstraints != nil {
				defaultMatchResources(policy.Spec.MatchConstraints)
			}
			found = append(found, policy)
		case "ValidatingAdmissionPolicyBinding":
			binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(doc, binding); err != nil {
				return nil, err
			}
			binding.TypeMeta = metav1.TypeMeta{}
			if binding.Spec.MatchResources != nil {
				defaultMatchResources(binding.Spec.MatchResources)
			}
			found = append(found, binding)
		}
	}
}

func defaultMatchResources(m *admissionregistrationv1.MatchResources) {
	if m.NamespaceSelector == nil {
		m.NamespaceSelector = &metav1.LabelSelector{}
	}
	if m.ObjectSelector == nil {
		m.ObjectSelector = &metav1.LabelSelector{}
	}
	if m.MatchPolicy == nil {
		equivalent := admissionregistrationv1.Equivalent
		m.MatchPolicy = &equivalent
	}
	for _, rules := range [][]admissionregistrationv1.NamedRuleWithOperations{m.ResourceRules, m.ExcludeResourceRules} {
		for i := range rules {
			if rules[i].Scope == nil {
				all := admissionregistrationv1.AllScopes
				rules[i].Scope = &all
			}
		}
	}
}

// compilePolicy is k8s.io/apiserver's validating.compilePolicy (unexported there), except that
// expressions are compiled with the environment of a new policy, as the API server validates a
// policy that is created or changed.
func compilePolicy(policy *validating.Policy) validating.Validator {
	optionalVars := cel.OptionalVariableDeclarations{HasParams: policy.Spec.ParamKind != nil, HasAuthorizer: true}
	messageVars := cel.OptionalVariableDeclarations{HasParams: policy.Spec.ParamKind != nil, HasAuthorizer: false}
	template, err := cel.NewCompositionEnv(cel.VariablesTypeName, environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	if err != nil {
		panic(err)
	}
	compiler := cel.NewCompositedCompilerFromTemplate(template)
	variables := make([]cel.NamedExpressionAccessor, len(policy.Spec.Variables))
	for i, v := range policy.Spec.Variables {
		variables[i] = &validating.Variable{Name: v.Name, Expression: v.Expression}
	}
	compiler.CompileAndStoreVariables(variables, optionalVars, environment.NewExpressions)
	var matcher matchconditions.Matcher
	if len(policy.Spec.MatchConditions) > 0 {
		conditions := make([]cel.ExpressionAccessor, len(policy.Spec.MatchConditions))
		for i := range policy.Spec.MatchConditions {
			conditions[i] = (*matchconditions.MatchCondition)(&policy.Spec.MatchConditions[i])
		}
		matcher = matchconditions.NewMatcher(compiler.CompileCondition(conditions, optionalVars, environment.NewExpressions), policy.Spec.FailurePolicy, "policy", "validate", policy.Name)
	}
	validations := make([]cel.ExpressionAccessor, len(policy.Spec.Validations))
	messages := make([]cel.ExpressionAccessor, len(policy.Spec.Validations))
	for i, v := range policy.Spec.Validations {
		validations[i] = &validating.ValidationCondition{Expression: v.Expression, Message: v.Message, Reason: v.Reason}
		if v.MessageExpression != "" {
			messages[i] = &validating.MessageExpressionCondition{MessageExpression: v.MessageExpression}
		}
	}
	audits := make([]cel.ExpressionAccessor, len(policy.Spec.AuditAnnotations))
	for i, a := range policy.Spec.AuditAnnotations {
		audits[i] = &validating.AuditAnnotationCondition{Key: a.Key, ValueExpression: a.ValueExpression}
	}
	return validating.NewValidator(
		compiler.CompileCondition(validations, optionalVars, environment.NewExpressions),
		matcher,
		compiler.CompileCondition(audits, optionalVars, environment.NewExpressions),
		compiler.CompileCondition(messages, messageVars, environment.NewExpressions),
		policy.Spec.FailurePolicy,
	)
}
