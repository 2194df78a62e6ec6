using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests.Security;

/// <summary>Rate limit per key, the request size limit on every endpoint, and the cap on stored answer bodies.</summary>
public sealed class LimitsTests
{
    [Fact]
    public async Task RateLimit_PerKey_Returns429ProblemWithRetryAfter_OtherKeysAndHealthUnaffected()
    {
        await using var server = await SecureServer.StartAsync(o =>
        {
            SecureServer.WithKeys(o);
            o.RateLimitPerSecond = 3;
        });
        var client = server.Http(SecureServer.ClientSecret);

        var statuses = new List<HttpStatusCode>();
        HttpResponseMessage? limited = null;
        for (var i = 0; i < 10; i++)
        {
            var response = await client.GetAsync(Api.Transactions);
            statuses.Add(response.StatusCode);
            if (response.StatusCode == HttpStatusCode.TooManyRequests)
            {
                limited ??= response;
            }
        }

        statuses.Count(s => s == HttpStatusCode.OK).ShouldBeInRange(3, 5); // 3 a second; a refill may land mid-loop
        limited.ShouldNotBeNull();
        (await Api.ReadProblemAsync(limited, HttpStatusCode.TooManyRequests)).Type.ShouldBe("https://treaty.dev/problems/rate-limited");
        limited.Headers.RetryAfter.ShouldNotBeNull().Delta.ShouldNotBeNull().TotalSeconds.ShouldBeGreaterThanOrEqualTo(1);

        using (var other = await server.Http(SecureServer.OperatorSecret).GetAsync(Api.Transactions))
        {
            other.StatusCode.ShouldBe(HttpStatusCode.OK); // its own bucket
        }

        for (var i = 0; i < 10; i++)
        {
            using var health = await client.GetAsync("/healthz");
            health.StatusCode.ShouldBe(HttpStatusCode.OK);
        }
    }

    [Fact]
    public async Task RateLimit_RequestsWithoutAValidKey_AreLimitedByAddress()
    {
        await using var server = await SecureServer.StartAsync(o =>
        {
            SecureServer.WithKeys(o);
            o.RateLimitPerSecond = 2;
        });
        var guesser = server.Http("guessed-key-0000000000000");

        var statuses = new List<HttpStatusCode>();
        for (var i = 0; i < 8; i++)
        {
            using var response = await guesser.GetAsync(Api.Transactions);
            statuses.Add(response.StatusCode);
        }

        statuses.ShouldContain(HttpStatusCode.Unauthorized);
        statuses.ShouldContain(HttpStatusCode.TooManyRequests);
    }

    [Theory]
    [InlineData("GET", Api.Transactions)]
    [InlineData("POST", Api.Transactions)]
    [InlineData("GET", Api.Transactions + "/g1")]
    [InlineData("GET", Api.Transactions + "/g1/events")]
    [InlineData("POST", Api.Transactions + "/g1/submit")]
    [InlineData("POST", Api.Transactions + "/g1/retry")]
    [InlineData("POST", Api.Transactions + "/g1/abort")]
    [InlineData("GET", "/healthz")]
    [InlineData("PUT", "/no/such/endpoint")]
    public async Task OversizedBody_EveryEndpoint_Returns413Problem(string method, string path)
    {
        await using var server = await SecureServer.StartAsync(o => o.MaxRequestBodyBytes = 4096);
        using var request = new HttpRequestMessage(new HttpMethod(method), path)
        {
            Content = new ByteArrayContent(Encoding.UTF8.GetBytes("{\"x\":\"" + new string('a', 10_000) + "\"}"))
            {
                Headers = { ContentType = new MediaTypeHeaderValue("application/json") },
            },
        };

        using var response = await server.Http().SendAsync(request);

        (await Api.ReadProblemAsync(response, HttpStatusCode.RequestEntityTooLarge)).Type.ShouldBe("https://treaty.dev/problems/payload-too-large");
    }

    [Theory]
    [InlineData(Api.Transactions)]
    [InlineData(Api.Transactions + "/g1/abort")]
    public async Task OversizedChunkedBody_WithoutLength_Returns413Problem(string path)
    {
        await using var server = await SecureServer.StartAsync(o => o.MaxRequestBodyBytes = 4096);
        var body = "{\"reason\":\"" + new string('a', 10_000) + "\"}";
        using var content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(body)));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = content };
        request.Headers.TransferEncodingChunked = true;

        using var response = await server.Http().SendAsync(request);

        (await Api.ReadProblemAsync(response, HttpStatusCode.RequestEntityTooLarge)).Type.ShouldBe("https://treaty.dev/problems/payload-too-large");
    }

    [Fact]
    public async Task StoredBodies_OverTheCap_SuccessKeepsANote_FailureKeeps300CharsAndTheSize()
    {
        var big = new string('r', 5000);
        await using var participant = await LocalServer.StartAsync(context => context.Request.Path.Value switch
        {
            var p when p!.EndsWith("/big-ok", StringComparison.Ordinal) => Results.Text(JsonSerializer.Serialize(big), "application/json"),
            var p when p!.EndsWith("/big-no", StringComparison.Ordinal) => Results.Text("no: " + big, "text/plain", statusCode: 409),
            var p when p!.EndsWith("/long-detail", StringComparison.Ordinal) => Results.Json(new { detail = "d" + new string('é', 400) }, statusCode: 422),
            _ => Results.Ok(),
        });
        await using var server = await SecureServer.StartAsync(o => o.MaxBranchResultBytes = 1024);
        var http = server.Http();
        var b = participant.Base;

        var okGid = Api.NewGid("cap");
        using (var ok = await Api.SubmitAsync(http, Json.Saga(okGid, Api.PayloadNode(), Json.Step("s", $"{b}/big-ok", $"{b}/undo")), "?wait=10s"))
        {
            var view = await Api.ReadViewAsync(ok);
            view.Status.ShouldBe("committed");
            var note = view.Op("s", "action").Result.ShouldNotBeNull();
            note.GetProperty("truncated").GetBoolean().ShouldBeTrue();
            note.GetProperty("limit").GetInt32().ShouldBe(1024);
            note.GetProperty("bytes").GetString().ShouldBe("5002");
            note.GetRawText().Length.ShouldBeLessThan(400);
        }

        var noGid = Api.NewGid("cap");
        using (var no = await Api.SubmitAsync(http, Json.Saga(noGid, Api.PayloadNode(), Json.Step("s", $"{b}/big-no", $"{b}/undo")), "?wait=10s"))
        {
            var view = await Api.ReadViewAsync(no);
            view.Status.ShouldBe("aborted");
            var error = view.Op("s", "action").LastError.ShouldNotBeNull();
            error.ShouldStartWith("HTTP 409: no: rrr");
            error.ShouldEndWith("… (truncated, 5004 bytes)");
            error.Length.ShouldBeLessThan(360);
        }

        var detailGid = Api.NewGid("cap");
        using (var detail = await Api.SubmitAsync(http, Json.Saga(detailGid, Api.PayloadNode(), Json.Step("s", $"{b}/long-detail", $"{b}/undo")), "?wait=10s"))
        {
            var error = (await Api.ReadViewAsync(detail)).Op("s", "action").LastError.ShouldNotBeNull();
            error.ShouldStartWith("HTTP 422: d");
            error.ShouldEndWith("… (truncated, 801 bytes)"); // under the cap: the detail itself is clipped
            error.Length.ShouldBeLessThan(360);
        }
    }

    [Theory]
    [InlineData(100)]
    [InlineData(64 * 1024 * 1024)]
    public void StoredBodyCap_OutOfRange_IsAStartupError(int bytes)
    {
        var options = new TreatyServerOptions { MaxBranchResultBytes = bytes };
        Should.Throw<ArgumentException>(options.Validate).Message.ShouldContain("MaxBranchResultBytes");
    }
}
