using Treaty.Core.Contracts;

namespace Treaty.Client.Tests;

/// <summary>The client's pure pieces: query strings, wait formatting, error parsing, construction.</summary>
public sealed class ClientInternalsTests
{
    [Fact]
    public void ToQueryString_NoFilters_IsEmpty()
    {
        new TransactionListQuery().ToQueryString().ShouldBe("");
    }

    [Fact]
    public void ToQueryString_EveryFilter_IsEscapedInAFixedOrder()
    {
        var query = new TransactionListQuery
        {
            Status = "committed",
            Protocol = "saga",
            Stuck = false,
            Since = new DateTimeOffset(2026, 1, 2, 3, 4, 5, TimeSpan.FromHours(1)),
            Limit = 2,
            Cursor = "a b/c+d",
        };

        query.ToQueryString().ShouldBe(
            "?status=committed&protocol=saga&stuck=false&since=2026-01-02T03%3A04%3A05.0000000%2B01%3A00&limit=2&cursor=a%20b%2Fc%2Bd");
    }

    [Theory]
    [InlineData(5000, "5s")]
    [InlineData(1500, "1500ms")]
    [InlineData(0, "0s")]
    [InlineData(-10, "0s")]
    [InlineData(0.2, "1ms")]
    public void FormatWait_WholeSecondsOrMilliseconds(double ms, string expected)
    {
        TreatyClient.FormatWait(TimeSpan.FromMilliseconds(ms)).ShouldBe(expected);
    }

    [Fact]
    public void ParseProblem_ProblemJson_KeepsEveryField()
    {
        var problem = TreatyClient.ParseProblem(400, "Bad Request",
            """{"type":"https://treaty.dev/problems/validation","title":"Invalid","status":400,"detail":"d","errors":{"branches[0].action":["Must be a URL."]}}""");

        problem.Type.ShouldBe(ProblemTypes.Validation);
        problem.Title.ShouldBe("Invalid");
        problem.Detail.ShouldBe("d");
        problem.Errors.ShouldNotBeNull()["branches[0].action"].ShouldBe(["Must be a URL."]);
    }

    [Fact]
    public void ParseProblem_HtmlFromAProxy_BecomesAboutBlankWithTheBodyAsDetail()
    {
        var problem = TreatyClient.ParseProblem(502, "Bad Gateway", "<html>upstream down</html>");

        problem.Type.ShouldBe("about:blank");
        problem.Title.ShouldBe("Bad Gateway");
        problem.Status.ShouldBe(502);
        problem.Detail.ShouldBe("<html>upstream down</html>");
        problem.Errors.ShouldBeNull();
    }

    [Fact]
    public void ParseProblem_EmptyBodyWithoutReason_UsesTheStatus()
    {
        var problem = TreatyClient.ParseProblem(503, null, "");

        problem.Title.ShouldBe("HTTP 503");
        problem.Detail.ShouldBeNull();
    }

    [Fact]
    public void ParseProblem_PartialJson_FillsTheMissingFields()
    {
        var problem = TreatyClient.ParseProblem(409, "Conflict", """{"detail":"only this"}""");

        problem.Type.ShouldBe("about:blank");
        problem.Title.ShouldBe("Conflict");
        problem.Status.ShouldBe(409);
        problem.Detail.ShouldBe("only this");
    }

    [Fact]
    public void ParseProblem_HugeNonJsonBody_IsClipped()
    {
        var problem = TreatyClient.ParseProblem(500, "Internal Server Error", new string('x', 200_000));

        problem.Detail.ShouldNotBeNull().Length.ShouldBe(64 * 1024);
    }

    [Theory]
    [InlineData(400, false)]
    [InlineData(404, false)]
    [InlineData(409, false)]
    [InlineData(408, true)]
    [InlineData(429, true)]
    [InlineData(500, true)]
    [InlineData(503, true)]
    public void TreatyApiException_IsTransient_OnlyForRetryableStatuses(int status, bool transient)
    {
        new TreatyApiException(status, new ProblemView("about:blank", "t", status, null, null, null)).IsTransient.ShouldBe(transient);
    }

    [Fact]
    public void Constructor_HttpClientWithoutBaseAddress_ThrowsNamingHttp()
    {
        using var http = new HttpClient();

        Should.Throw<ArgumentException>(() => new TreatyClient(http)).ParamName.ShouldBe("http");
    }

    [Fact]
    public void Constructor_BaseAddressWithPath_GetsATrailingSlash()
    {
        using var http = new HttpClient { BaseAddress = new Uri("http://coordinator:8080/treaty") };
        using var client = new TreatyClient(http);

        client.BaseAddress.AbsoluteUri.ShouldBe("http://coordinator:8080/treaty/");
    }

    [Fact]
    public void Dispose_ClientGivenAnHttpClient_LeavesItUsable()
    {
        using var http = new HttpClient { BaseAddress = new Uri("http://127.0.0.1:1") };
        new TreatyClient(http).Dispose();

        // HttpClient.CancelPendingRequests throws ObjectDisposedException once the client is disposed.
        Should.NotThrow(http.CancelPendingRequests);
    }

    [Fact]
    public void Dispose_HttpClientDisposed_ThrowsObjectDisposed()
    {
        var http = new HttpClient { BaseAddress = new Uri("http://127.0.0.1:1") };
        http.Dispose();

        // The guard the previous test relies on.
        Should.Throw<ObjectDisposedException>(http.CancelPendingRequests);
    }
}
