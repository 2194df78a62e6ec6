using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Treaty.Core.Engine;
using Treaty.Core.Serialization;
using Xunit.Abstractions;

namespace Treaty.Server.Tests.Security;

/// <summary>
/// Generated hostile input against every endpoint the app maps (read from its
/// <see cref="EndpointDataSource"/>, so a new endpoint is fuzzed without touching this test), on a
/// keyless server and on a keyed one with no key, a wrong key, a client key and an operator key.
/// Every answer must be a 4xx problem+json (Kestrel's bodiless 414 and 431 excepted, see
/// docs/decisions.md), the server must stay healthy, and nothing may be stored. Seeded: set
/// TREATY_FUZZ_SEED to replay a run; the seed is printed.
/// </summary>
public sealed class FuzzTests(ITestOutputHelper output)
{
    private const int Requests = 10_400;
    private const int MaxBody = 64 * 1024;

    private enum Caller
    {
        Keyless,
        NoKey,
        WrongKey,
        ClientKey,
        OperatorKey,
    }

    [Fact]
    public async Task GeneratedMalformedRequests_EveryEndpoint_Answer4xxProblemJson_NothingStored_ServerHealthy()
    {
        var seed = int.TryParse(Environment.GetEnvironmentVariable("TREATY_FUZZ_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out var s)
            ? s
            : Random.Shared.Next();
        output.WriteLine($"TREATY_FUZZ_SEED={seed}");

        await using var keyless = await SecureServer.StartAsync(o => o.MaxRequestBodyBytes = MaxBody);
        await using var keyed = await SecureServer.StartAsync(o =>
        {
            SecureServer.WithKeys(o);
            o.MaxRequestBodyBytes = MaxBody;
        });
        var routes = Routes(keyed);
        routes.Select(r => r.Pattern).ShouldContain("/api/v1/transactions/{gid}/abort"); // the enumeration sees the API
        output.WriteLine($"Endpoints: {string.Join(", ", routes.Select(r => $"{r.Method} {r.Pattern}"))}");

        var clients = new Dictionary<Caller, HttpClient>
        {
            [Caller.Keyless] = keyless.Http(),
            [Caller.NoKey] = keyed.Http(),
            [Caller.WrongKey] = keyed.Http(),
            [Caller.ClientKey] = keyed.Http(SecureServer.ClientSecret),
            [Caller.OperatorKey] = keyed.Http("ops:" + SecureServer.OperatorSecret),
        };

        var failures = new ConcurrentQueue<string>();
        var statuses = new ConcurrentDictionary<int, int>();
        var sent = 0;
        var notSendable = 0;
        var resent = 0;
        var clock = Stopwatch.StartNew();
        await Parallel.ForAsync(0, Requests, new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (i, ct) =>
        {
            // One generator per request, seeded from the run's seed and the index: a failure names the
            // index, and a replay with the same seed produces the same request whatever the scheduling.
            var gen = new Generator(unchecked(seed + (i * 1_000_003)));
            var caller = (Caller)gen.Pick(0, 1, 2, 3, 4, 4, 4);
            var request = gen.Request(routes, caller);
            if (request is null)
            {
                Interlocked.Increment(ref notSendable);
                return;
            }

            using (request)
            {
                HttpResponseMessage response;
                try
                {
                    response = await clients[caller].SendAsync(request, ct);
                }
                catch (Exception ex) when (ex is InvalidOperationException or FormatException || (ex is HttpRequestException && ex.InnerException is null))
                {
                    // HttpClient itself refused to send it (e.g. a non-ASCII header value).
                    Interlocked.Increment(ref notSendable);
                    return;
                }
                catch (HttpRequestException ex)
                {
                    // The server may close a connection with an unread body after answering (RFC 9112), and
                    // a pooled connection can be closed under a new request. Send it again on a fresh
                    // connection, body only after 100-continue, and check that answer.
                    Interlocked.Increment(ref resent);
                    using var again = new Generator(unchecked(seed + (i * 1_000_003))).Request(routes, caller)!;
                    again.Headers.ExpectContinue = again.Content is not null;
                    again.Headers.ConnectionClose = true;
                    using var fresh = caller == Caller.Keyless ? keyless.Http() : keyed.Http(Key(caller));
                    try
                    {
                        using var answer = await fresh.SendAsync(again, ct);
                        Interlocked.Increment(ref sent);
                        statuses.AddOrUpdate((int)answer.StatusCode, 1, (_, n) => n + 1);
                        if (await CheckAsync(answer, again, ct) is { } wrong)
                        {
                            failures.Enqueue($"#{i} {caller} {again.Method} {Clip(again.RequestUri!.OriginalString)} → {(int)answer.StatusCode}: {wrong}");
                        }
                    }
                    catch (HttpRequestException retryError)
                    {
                        failures.Enqueue($"#{i} {caller} {request.Method} {Clip(request.RequestUri!.OriginalString)} body {request.Content?.Headers.ContentLength}: {ex.Message} {ex.InnerException?.Message}; again: {retryError.Message} {retryError.InnerException?.Message}; headers {again.Headers} {again.Content?.Headers}");
                    }

                    return;
                }

                using (response)
                {
                    Interlocked.Increment(ref sent);
                    var status = (int)response.StatusCode;
                    statuses.AddOrUpdate(status, 1, (_, n) => n + 1);
                    var problem = await CheckAsync(response, request, ct);
                    if (problem is not null)
                    {
                        failures.Enqueue($"#{i} {caller} {request.Method} {Clip(request.RequestUri!.OriginalString)} → {status}: {problem}");
                    }
                }
            }
        });
        clock.Stop();
        output.WriteLine($"{sent} answered ({resent} sent again on a fresh connection), {notSendable} not sendable by HttpClient, in {clock.Elapsed.TotalSeconds:0.0} s; " +
            $"statuses: {string.Join(", ", statuses.OrderBy(p => p.Key).Select(p => $"{p.Key}×{p.Value}"))}");

        if (Environment.GetEnvironmentVariable("TREATY_FUZZ_REPORT") is { Length: > 0 } report)
        {
            await File.WriteAllLinesAsync(report, failures, new UTF8Encoding(false));
        }

        failures.Take(20).ShouldBeEmpty($"seed {seed}: {failures.Count} bad answers");
        sent.ShouldBeGreaterThanOrEqualTo(10_000);
        statuses.Keys.ShouldAllBe(code => code >= 400 && code < 500);
        foreach (var server in new[] { keyless, keyed })
        {
            var http = server.Http("ops:" + SecureServer.OperatorSecret);
            (await http.GetStringAsync("/healthz")).ShouldBe("ok");
            (await http.GetStringAsync("/readyz")).ShouldBe("ready");
            var stored = await server.Get<ITransactionStore>().ListAsync(new TransactionQuery(Limit: 10), CancellationToken.None);
            stored.Items.ShouldBeEmpty($"seed {seed}: the fuzz stored transactions");
        }
    }

    /// <summary>Null when the answer is a 4xx problem+json (or a bodiless 414/431 from Kestrel); else what is wrong.</summary>
    private static async Task<string?> CheckAsync(HttpResponseMessage response, HttpRequestMessage request, CancellationToken ct)
    {
        var status = (int)response.StatusCode;
        var body = await response.Content.ReadAsStringAsync(ct);
        if (status is < 400 or >= 500)
        {
            return "not a 4xx " + Clip(body);
        }

        if (status is 414 or 431 && body.Length == 0)
        {
            return null; // refused by Kestrel before any endpoint ran
        }

        if (status == 400 && body.Length == 0 && request.RequestUri!.OriginalString.Contains("%00", StringComparison.Ordinal))
        {
            return null; // Kestrel refuses a path with an encoded NUL before any endpoint runs
        }

        if (body.Length == 0)
        {
            return $"no body; request headers: {request.Headers} {request.Content?.Headers}";
        }

        if (response.Content.Headers.ContentType?.MediaType != "application/problem+json")
        {
            return $"content type {response.Content.Headers.ContentType} {Clip(body)}";
        }

        try
        {
            var problem = JsonSerializer.Deserialize(body, TreatyJsonContext.Default.ProblemView);
            return problem is not null && problem.Status == status && problem.Type.StartsWith("https://treaty.dev/problems/", StringComparison.Ordinal)
                ? null
                : "problem does not match " + Clip(body);
        }
        catch (JsonException ex)
        {
            return $"body is not a problem ({ex.Message}) {Clip(body)}";
        }
    }

    private static string? Key(Caller caller) => caller switch
    {
        Caller.ClientKey => SecureServer.ClientSecret,
        Caller.OperatorKey => "ops:" + SecureServer.OperatorSecret,
        _ => null,
    };

    private static string Clip(string text) => text.Length <= 300 ? text : text[..300] + "…";

    private static List<Route> Routes(SecureServer server) =>
        [.. server.Get<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>()
            .SelectMany(e => (e.Metadata.GetMetadata<HttpMethodMetadata>()?.HttpMethods ?? ["GET"])
                .Select(m => new Route(m, "/" + e.RoutePattern.RawText!.Trim('/'), e.Metadata.GetMetadata<Microsoft.AspNetCore.Authorization.IAllowAnonymous>() is not null)))
            .Distinct()];

    internal sealed record Route(string Method, string Pattern, bool Anonymous);

    /// <summary>Produces one hostile request. Every request is invalid by construction: gids name
    /// nothing stored, every branch URL is outside the (loopback) allowlist, list queries carry a bad
    /// parameter, health and document endpoints get a wrong method, a wrong name or too big a body.</summary>
    private sealed class Generator(int seed)
    {
        private static readonly string[] Odd =
        [
            "\u0000", "\uFEFF", "\u202E", "\u200B", "\uD83D\uDE00", "\uD800", "\uDFFF", "Ω", "𝕏", "e\u0301", "\u05D0\u05D1", "ｇｉｄ",
            "%00", "%2F", "%2e%2e", "../", "..\\", "'", "\"", "<script>", "{{x}}", "${x}", "\r\n", "\t", " ", "null", "true",
            "-1", "1e308", "NaN", "\u0085", "\u2028", "👩‍👩‍👧", "\uFFFF", "\u0007", "Ǆ", "İ", "ß", "/", "?", "#", "&", "=", ";", ":",
        ];

        private static readonly string[] Hosts =
        [
            "http://10.0.0.1", "http://169.254.169.254", "https://example.com", "http://[fd00::1]", "http://evil.test:8080",
            "http://0.0.0.0", "http://ｅｖｉｌ.test", "http://192.168.1.1", "http://127.0.0.1.nip.io", "http://localhost.evil.test",
        ];

        private readonly Random _r = new(seed);

        public T Pick<T>(params T[] items) => items[_r.Next(items.Length)];

        private bool Chance(int percent) => _r.Next(100) < percent;

        public string OddString(int maxPieces = 12)
        {
            var text = new StringBuilder();
            var pieces = _r.Next(1, maxPieces + 1);
            for (var i = 0; i < pieces; i++)
            {
                text.Append(_r.Next(4) switch
                {
                    0 => Pick(Odd),
                    1 => new string((char)_r.Next(0x20, 0x7F), _r.Next(1, 8)),
                    2 => char.ConvertFromUtf32(_r.Next(0x80, 0x2FFFF) is var cp && cp is >= 0xD800 and <= 0xDFFF ? 0x41 : cp),
                    _ => _r.Next().ToString(CultureInfo.InvariantCulture),
                });
            }

            if (Chance(3))
            {
                text.Append('x', _r.Next(1000, 9000)); // long: a 414 when it lands in the path
            }

            return text.ToString();
        }

        /// <summary>Odd but printable ASCII: HttpClient refuses other header bytes, and Kestrel answers
        /// control characters with a bodiless 400 before any endpoint runs (see docs/decisions.md).</summary>
        private string HeaderString() =>
            new([.. OddString(4).Select(c => c is >= ' ' and <= '~' ? c : (char)(' ' + (c % 95)))]);

        private string BadUrl() => Pick(Hosts) + "/" + Uri.EscapeDataString(OddString(3)) + (Chance(10) ? OddString(2) : "");

        private JsonNode? RandomValue(int depth)
        {
            return _r.Next(depth > 3 ? 5 : 8) switch
            {
                0 => null,
                1 => JsonValue.Create(OddString()),
                2 => JsonValue.Create(_r.NextDouble() * Math.Pow(10, _r.Next(-10, 300)) * (Chance(50) ? -1 : 1)),
                3 => JsonValue.Create(Chance(50)),
                4 => JsonValue.Create(_r.NextInt64(long.MinValue, long.MaxValue)),
                5 => new JsonArray([.. Enumerable.Range(0, _r.Next(4)).Select(_ => RandomValue(depth + 1))]),
                _ => Object(depth),
            };
        }

        private JsonObject Object(int depth)
        {
            var o = new JsonObject();
            for (var i = _r.Next(4); i > 0; i--)
            {
                o[OddString(3)] = RandomValue(depth + 1);
            }

            return o;
        }

        /// <summary>A submit that would be well formed but for its URLs, all outside the allowlist.</summary>
        private JsonObject Template()
        {
            var protocol = Pick("saga", "tcc", "2pc", "3pc", "msg", OddString(2));
            var ops = protocol switch
            {
                "tcc" => new[] { "try", "confirm", "cancel" },
                "2pc" => ["prepare", "commit", "rollback"],
                "3pc" => ["canCommit", "preCommit", "doCommit", "abort"],
                "msg" => ["action"],
                _ => ["action", "compensate"],
            };
            var branches = new JsonArray();
            for (var i = _r.Next(1, 4); i > 0; i--)
            {
                var branch = new JsonObject { ["name"] = Chance(80) ? $"b{i}" : OddString(3) };
                foreach (var op in ops)
                {
                    branch[op] = BadUrl();
                }

                branches.Add(branch);
            }

            var body = new JsonObject
            {
                ["gid"] = Chance(70) ? $"fz-{_r.Next():x}" : OddString(),
                ["protocol"] = protocol,
                ["payload"] = RandomValue(0),
                ["branches"] = branches,
            };
            if (protocol == "msg")
            {
                body["queryPrepared"] = BadUrl();
            }

            return body;
        }

        private JsonObject WrongType(JsonObject body)
        {
            var field = Pick("gid", "protocol", "branches", "timeoutMs", "retry", "payload", "queryPrepared");
            body[field] = RandomValue(2);
            if (Chance(50) && body["branches"] is JsonArray { Count: > 0 } branches && branches[0] is JsonObject first)
            {
                first[Pick("name", "action", "compensate", "try", "dependsOn", "pivot", "timeoutMs", "retry")] = RandomValue(2);
            }

            return body;
        }

        private static string Nested(int depth, bool arrays)
        {
            var text = new StringBuilder(depth * 6);
            for (var i = 0; i < depth; i++)
            {
                text.Append(arrays ? "[" : "{\"a\":");
            }

            text.Append('1');
            for (var i = 0; i < depth; i++)
            {
                text.Append(arrays ? ']' : '}');
            }

            return text.ToString();
        }

        private byte[] Body()
        {
            string text;
            switch (_r.Next(12))
            {
                case 0:
                    var bytes = new byte[_r.Next(0, 2000)];
                    _r.NextBytes(bytes);
                    return bytes;
                case 1:
                    text = OddString();
                    break;
                case 2:
                    var full = Template().ToJsonString();
                    text = full[.._r.Next(full.Length)];
                    break;
                case 3:
                    text = Nested(_r.Next(65, 9000), Chance(50));
                    break;
                case 4:
                    var deep = Template();
                    deep["payload"] = JsonNode.Parse(Nested(_r.Next(30, 63), Chance(50)));
                    text = Chance(50) ? deep.ToJsonString() : "{\"payload\":" + Nested(_r.Next(65, 5000), true) + "}";
                    break;
                case 5:
                    text = WrongType(Template()).ToJsonString();
                    break;
                case 6:
                    var extra = Template();
                    extra[OddString(2)] = RandomValue(1);
                    text = extra.ToJsonString();
                    break;
                case 7:
                    text = "{\"reason\":\"" + new string('r', MaxBody) + "\"}"; // over the limit
                    break;
                case 8:
                    var numbers = Template();
                    numbers["timeoutMs"] = JsonValue.Create(Pick(-1L, 0L, long.MaxValue, long.MinValue));
                    numbers["retry"] = new JsonObject { ["maxAttempts"] = Pick(-5, 0, int.MaxValue), ["initialDelayMs"] = -1 };
                    text = numbers.ToJsonString().Replace("-1", Pick("-1", "1e400", "0x10", "01", "1.5"), StringComparison.Ordinal);
                    break;
                case 9:
                    text = Template().ToJsonString();
                    if (Chance(50))
                    {
                        text = "{\"gid\":\"dup\"," + text[1..]; // a duplicated property
                    }

                    break;
                case 10:
                    text = RandomValue(0)?.ToJsonString() ?? "null";
                    break;
                default:
                    text = Chance(50) ? "{\"reason\":" + RandomValue(2)?.ToJsonString() + "}" : "{\"reason\":\"" + new string('x', _r.Next(501, 3000)) + "\"}";
                    break;
            }

            return Pick(Encoding.UTF8, Encoding.UTF8, Encoding.UTF8, Encoding.Unicode, Encoding.Latin1).GetBytes(text);
        }

        private string Fill(string pattern) =>
            System.Text.RegularExpressions.Regex.Replace(pattern, "{[^}]+}", m => m.Value.Contains("documentName", StringComparison.Ordinal)
                ? Uri.EscapeDataString(NotTheDocument("v" + OddString(2)))
                : Uri.EscapeDataString(NotADotSegment(OddString())));

        /// <summary>Never "." or "..": the client and Kestrel both drop such a path segment (RFC 3986
        /// dot segments), so "/api/v1/transactions/." is the listing and rightly answers 200 (seed 718772863).</summary>
        private static string NotADotSegment(string value) => value is "." or ".." ? value + "-0" : value;

        /// <summary>Never the real OpenAPI document's name (a random "v" + two characters was "v1" once in CI, and
        /// a GET of the real document rightly answers 200).</summary>
        private static string NotTheDocument(string name) =>
            string.Equals(name.Trim(), "v1", StringComparison.OrdinalIgnoreCase) ? name + "-0" : name;

        private string Query(string path, bool listing)
        {
            if (listing)
            {
                // At least one parameter no listing or count accepts, so the answer is a 400 whatever else there is.
                var bad = Pick($"protocol={Uri.EscapeDataString("x" + OddString(3))}", $"stuck={Uri.EscapeDataString("x" + OddString(2))}",
                    path == "/api/v1/transactions" ? $"limit={Pick("0", "-1", "501", "1e3", "٣", "99999999999", "")}" : $"status={Uri.EscapeDataString(OddString(2))}");
                var more = Chance(50) ? $"&since={Uri.EscapeDataString(OddString(3))}&cursor={Uri.EscapeDataString(OddString(4))}&wait={Uri.EscapeDataString(OddString(2))}" : "";
                return "?" + bad + more;
            }

            return Chance(30) ? $"?wait={Uri.EscapeDataString(OddString(2))}&{Uri.EscapeDataString(OddString(2))}={Uri.EscapeDataString(OddString(2))}" : "";
        }

        public HttpRequestMessage? Request(List<Route> routes, Caller caller)
        {
            string method;
            string path;
            var listing = false;
            if (Chance(5))
            {
                method = Pick("GET", "POST", "PUT");
                // Not "/..": that is "/", the dashboard page, which rightly answers 200 (seed 379139899).
                path = "/" + Uri.EscapeDataString(NotADotSegment(OddString())) + (Chance(50) ? "/api/v1/transactions" : "");
            }
            else
            {
                var route = Pick([.. routes]);
                path = Fill(route.Pattern);
                var fixedPath = !route.Pattern.Contains('{', StringComparison.Ordinal);
                method = Chance(10) ? Pick("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS") : route.Method;
                if (method == "GET" && fixedPath)
                {
                    if (route.Anonymous)
                    {
                        // A health check or the dashboard page: all that can be wrong is the method (or the size, below).
                        method = Pick("POST", "PUT", "DELETE", "PATCH");
                    }
                    else
                    {
                        listing = true; // a listing or count: wrong only by its query
                    }
                }
            }

            Uri uri;
            try
            {
                uri = new Uri(path + Query(path, listing), UriKind.Relative);
            }
            catch (UriFormatException)
            {
                return null;
            }

            var request = new HttpRequestMessage(new HttpMethod(method), uri);
            if (method != "GET" || Chance(10))
            {
                var body = Body();
                var content = Chance(10) ? new StreamContent(new MemoryStream(body)) : (HttpContent)new ByteArrayContent(body);
                var type = Pick("application/json", "application/json", "application/json", "application/problem+json", "text/plain",
                    "application/json; charset=utf-16", "multipart/form-data; boundary=x", "", "application/" + HeaderString());
                if (type.Length > 0)
                {
                    content.Headers.TryAddWithoutValidation("Content-Type", type);
                }

                request.Content = content;
                if (content is StreamContent)
                {
                    request.Headers.TransferEncodingChunked = true;
                }
            }

            if (caller == Caller.WrongKey)
            {
                request.Headers.TryAddWithoutValidation("Authorization", Pick(
                    "Bearer", "Bearer ", "Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes(SecureServer.OperatorSecret)),
                    "Bearer " + SecureServer.OperatorSecret[..^1] + "X", "bearer " + HeaderString(), "Bearer app:" + SecureServer.OperatorSecret,
                    "Bearer " + new string('k', _r.Next(100, 40_000))));
            }

            if (Chance(20))
            {
                request.Headers.TryAddWithoutValidation("Treaty-Actor", HeaderString());
            }

            if (Chance(5))
            {
                request.Headers.TryAddWithoutValidation("X-Fuzz", new string('h', _r.Next(1000, 70_000))); // a 431 when it is too much
            }

            return request;
        }
    }
}
