//! The API contract is served by the binary: an OpenAPI 3.1 document of every `/api/v1`
//! route, errors described as problem+json, and a Swagger UI whose assets come from the
//! binary itself. (`scripts/contract-test` drives the server from this document.)

mod common;
use common::*;

const ROUTES: [(&str, &str); 20] = [
    ("post", "/api/v1/orders"),
    ("get", "/api/v1/orders"),
    ("get", "/api/v1/orders/{id}"),
    ("delete", "/api/v1/orders/{id}"),
    ("get", "/api/v1/balances"),
    ("get", "/api/v1/fills"),
    ("get", "/api/v1/assets"),
    ("get", "/api/v1/markets"),
    ("get", "/api/v1/markets/{symbol}/depth"),
    ("get", "/api/v1/markets/{symbol}/trades"),
    ("get", "/api/v1/markets/{symbol}/ticker"),
    ("get", "/api/v1/markets/{symbol}/candles"),
    ("post", "/api/v1/admin/users"),
    ("post", "/api/v1/admin/assets"),
    ("post", "/api/v1/admin/symbols"),
    ("patch", "/api/v1/admin/symbols/{symbol}"),
    ("post", "/api/v1/admin/deposits"),
    ("get", "/api/v1/admin/books/{symbol}"),
    ("get", "/api/v1/admin/reconcile"),
    ("get", "/api/v1/admin/status"),
];

#[test]
fn the_openapi_document_describes_every_route_and_its_errors() {
    let s = Server::start();
    let doc = s.json("/api/v1/openapi.json", None);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = 0;
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            assert!(
                ROUTES.contains(&(method.as_str(), path.as_str())),
                "undocumented route in the list: {method} {path}"
            );
            documented += 1;
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{method} {path}: no success response"
            );
            for (status, response) in responses {
                // Errors are problems; a 429 is one with `Retry-After`.
                let expected = match status.as_str() {
                    "429" => "#/components/responses/RateLimited",
                    _ => "#/components/responses/Problem",
                };
                if !status.starts_with('2') {
                    assert_eq!(response["$ref"], expected, "{method} {path} {status}");
                }
            }
            // The state-changing operations that take `Idempotency-Key`, and no others.
            let takes_key = op["parameters"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
            });
            let keyed = [
                ("post", "/api/v1/orders"),
                ("delete", "/api/v1/orders/{id}"),
                ("post", "/api/v1/admin/deposits"),
            ];
            assert_eq!(
                takes_key,
                keyed.contains(&(method.as_str(), path.as_str())),
                "{method} {path}"
            );
            if takes_key {
                for status in ["409", "422"] {
                    assert!(responses.contains_key(status), "{method} {path} {status}");
                }
            }
        }
    }
    assert_eq!(documented, ROUTES.len());
    let problem = &doc["components"]["responses"]["Problem"]["content"];
    assert!(problem["application/problem+json"]["schema"].is_object());
    let limited = &doc["components"]["responses"]["RateLimited"];
    assert_eq!(
        limited["headers"]["Retry-After"]["schema"]["type"],
        "integer"
    );
    for scheme in ["user_id", "admin_token"] {
        assert_eq!(doc["components"]["securitySchemes"][scheme]["in"], "header");
    }
    // Every decimal field has the one syntax the server's parser accepts (the pattern is a
    // literal in each attribute: utoipa takes no constant there).
    let schemas = &doc["components"]["schemas"];
    let decimal = r"^([0-9]+\.?[0-9]*|\.[0-9]+)$";
    for (schema, field) in [
        ("OrderRequest", "price"),
        ("OrderRequest", "quantity"),
        ("OrderRequest", "quote_quantity"),
        ("NewSymbol", "tick_size"),
        ("NewSymbol", "lot_size"),
        ("NewSymbol", "min_notional"),
        ("NewSymbol", "max_quantity"),
        ("NewDeposit", "amount"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["pattern"], decimal,
            "{schema}.{field}"
        );
    }
    // Request bodies refuse unknown fields, as the server does.
    let order = &doc["components"]["schemas"]["OrderRequest"];
    assert_eq!(order["additionalProperties"], false, "{order}");
}

#[test]
fn the_swagger_ui_is_served_from_the_binary() {
    let s = Server::start();
    let page = s.get("/docs/", None);
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("://cdn") && !html.contains("unpkg.com"),
        "{html}"
    );
    // The page loads its scripts from here and points them at the document.
    let init = s.get("/docs/swagger-initializer.js", None).text().unwrap();
    assert!(init.contains(r#""url": "/api/v1/openapi.json""#), "{init}");
    let bundle = s.get("/docs/swagger-ui-bundle.js", None);
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().unwrap().len() > 100_000);
}
