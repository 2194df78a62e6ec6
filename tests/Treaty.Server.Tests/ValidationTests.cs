using System.Net;
using System.Text.Json.Nodes;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>
/// Every invalid submit is a problem+json that names the problem, stores nothing, and leaves the
/// server serving. This class has its own coordinator, so "nothing stored" is a plain count.
/// </summary>
public sealed class ValidationTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private readonly HttpClient _http = fixture.Http;

    private string Url(string gid, string op) => fixture.Participant.Url($"{gid}/s1/{op}");

    public static TheoryData<string> Cases =>
    [
        "malformed-json",
        "truncated-json",
        "json-array",
        "json-null",
        "empty-body",
        "unknown-protocol",
        "missing-protocol",
        "no-branches",
        "branch-without-action",
        "non-http-url",
        "relative-url",
        "duplicate-branch-names",
        "unknown-property",
        "unknown-branch-property",
        "unknown-dependency",
        "dependency-cycle",
        "bad-gid",
        "bad-retry",
        "bad-timeout",
        "tcc-operation-in-saga",
        "body-over-1MiB",
        "wrong-content-type",
        "no-content-type",
        "bad-wait",
        "wait-over-max",
        "wait-not-a-number",
    ];

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Submit_InvalidRequest_IsProblemJsonStoresNothingAndServerKeepsServing(string @case)
    {
        var gid = Api.NewGid("bad");
        var (body, contentType, query, status, type, field) = Build(@case, gid);
        var countBefore = (await Api.ListAsync(_http)).Items.Count;

        using (var response = await Api.PostAsync(_http, Api.Transactions + query, body, contentType))
        {
            var problem = await Api.ReadProblemAsync(response, status);
            problem.Type.ShouldEndWith(type, customMessage: problem.Detail);
            problem.Detail.ShouldNotBeNullOrWhiteSpace();
            problem.Instance.ShouldBe(Api.Transactions);
            if (field is not null)
            {
                var named = (problem.Errors?.Keys.Any(k => k.Contains(field, StringComparison.Ordinal)) ?? false)
                    || problem.Detail!.Contains(field, StringComparison.Ordinal);
                named.ShouldBeTrue($"'{field}' is not named in {System.Text.Json.JsonSerializer.Serialize(problem)}");
            }
        }

        (await Api.GetAsync(_http, gid)).ShouldBeNull();
        (await Api.ListAsync(_http)).Items.Count.ShouldBe(countBefore);
        fixture.Participant.CallsUnder($"{gid}/").ShouldBeEmpty();
        using var health = await _http.GetAsync("/healthz");
        health.StatusCode.ShouldBe(HttpStatusCode.OK);
    }

    private (string Body, string? ContentType, string Query, HttpStatusCode Status, string Type, string? Field) Build(string @case, string gid)
    {
        const string AppJson = "application/json";
        const string Validation = "validation";
        const string Malformed = "malformed-json";
        var valid = Json.Saga(gid, new JsonObject { ["x"] = 1 }, Json.Step("s1", Url(gid, "action"), Url(gid, "compensate")));
        JsonObject With(Action<JsonObject> change)
        {
            var copy = (JsonObject)valid.DeepClone();
            change(copy);
            return copy;
        }

        JsonObject Branch0(JsonObject body) => (JsonObject)body["branches"]![0]!;

        return @case switch
        {
            "malformed-json" => ($"{{\"gid\":\"{gid}\",\"protocol\":\"saga\",", AppJson, "", HttpStatusCode.BadRequest, Malformed, null),
            "truncated-json" => (valid.ToJsonString()[..^5], AppJson, "", HttpStatusCode.BadRequest, Malformed, null),
            "json-array" => ($"[{valid.ToJsonString()}]", AppJson, "", HttpStatusCode.BadRequest, Malformed, "$"),
            "json-null" => ("null", AppJson, "", HttpStatusCode.BadRequest, Validation, "$"),
            "empty-body" => ("", AppJson, "", HttpStatusCode.BadRequest, Malformed, null),
            "unknown-protocol" => (With(b => b["protocol"] = "foo").ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, "unsupported-protocol", "protocol"),
            "missing-protocol" => (With(b => b.Remove("protocol")).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "protocol"),
            "no-branches" => (With(b => b["branches"] = new JsonArray()).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "branches"),
            "branch-without-action" => (With(b => Branch0(b).Remove("action")).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "branches[0].action"),
            "non-http-url" => (With(b => Branch0(b)["action"] = "ftp://127.0.0.1/s1").ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "branches[0].action"),
            "relative-url" => (With(b => Branch0(b)["compensate"] = "/s1/compensate").ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "branches[0].compensate"),
            "duplicate-branch-names" => (With(b => b["branches"]!.AsArray().Add(Branch0(b).DeepClone())).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "branches[1].name"),
            "unknown-property" => (With(b => b["bogus"] = 1).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Malformed, "bogus"),
            "unknown-branch-property" => (With(b => Branch0(b)["acton"] = Url(gid, "action")).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Malformed, "acton"),
            "unknown-dependency" => (With(b => Branch0(b)["dependsOn"] = new JsonArray("ghost")).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "branches[0].dependsOn"),
            "dependency-cycle" => (With(b =>
            {
                Branch0(b)["dependsOn"] = new JsonArray("s2");
                b["branches"]!.AsArray().Add(Json.Step("s2", Url(gid, "a2"), Url(gid, "c2"), dependsOn: ["s1"]));
            }).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "dependsOn"),
            "bad-gid" => (With(b => b["gid"] = "has spaces/" + gid).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "gid"),
            "bad-retry" => (With(b => Branch0(b)["retry"] = Json.Retry(0, 10, 5)).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "branches[0].retry.maxAttempts"),
            "bad-timeout" => (With(b => b["timeoutMs"] = -5).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "timeoutMs"),
            "tcc-operation-in-saga" => (With(b => Branch0(b)["try"] = Url(gid, "try")).ToJsonString(), AppJson, "", HttpStatusCode.BadRequest, Validation, "branches[0].try"),
            "body-over-1MiB" => (With(b => b["payload"] = new string('x', 1024 * 1024 + 16)).ToJsonString(), AppJson, "", HttpStatusCode.RequestEntityTooLarge, "payload-too-large", null),
            "wrong-content-type" => (valid.ToJsonString(), "text/plain", "", HttpStatusCode.UnsupportedMediaType, "unsupported-media-type", null),
            "no-content-type" => (valid.ToJsonString(), null, "", HttpStatusCode.UnsupportedMediaType, "unsupported-media-type", null),
            "bad-wait" => (valid.ToJsonString(), AppJson, "?wait=soon", HttpStatusCode.BadRequest, Validation, "wait"),
            "wait-over-max" => (valid.ToJsonString(), AppJson, "?wait=1h", HttpStatusCode.BadRequest, Validation, "wait"),
            "wait-not-a-number" => (valid.ToJsonString(), AppJson, "?wait=NaN", HttpStatusCode.BadRequest, Validation, "wait"),
            _ => throw new ArgumentOutOfRangeException(nameof(@case), @case, null),
        };
    }

    [Fact]
    public async Task Submit_InvalidRequestViaClient_ThrowsWithTheFieldErrors()
    {
        var gid = Api.NewGid("badclient");
        var ex = await Should.ThrowAsync<Client.TreatyApiException>(() => fixture.Client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", "ftp://127.0.0.1/nope", Url(gid, "compensate"))
            .SubmitAsync());

        ex.StatusCode.ShouldBe(400);
        ex.Errors.ShouldNotBeNull().Keys.ShouldContain("branches[0].action");
        (await fixture.Client.GetAsync(gid)).ShouldBeNull();
    }

    [Fact]
    public async Task Abort_MalformedBody_Returns400AndChangesNothing()
    {
        using var response = await Api.PostAsync(_http, $"{Api.Transactions}/{Api.NewGid("x")}/abort", "{nope", "application/json");
        (await Api.ReadProblemAsync(response, HttpStatusCode.BadRequest)).Type.ShouldEndWith("malformed-json");
    }
}
