using Treaty.Core.Model;

namespace Treaty.Core.Tests.Model;

/// <summary>The one classification of a participant's HTTP answer that every invoker (HTTP, simulated) uses.</summary>
public sealed class BranchOutcomeTests
{
    [Theory]
    [InlineData(200)]
    [InlineData(201)]
    [InlineData(204)]
    public void FromHttp_2xx_IsASuccessWithTheJsonBodyAsResult(int status)
    {
        var outcome = BranchOutcome.FromHttp(status, """{"reserved":3}""");

        outcome.ShouldBe(BranchOutcome.Success(status, """{"reserved":3}"""));
    }

    [Fact]
    public void FromHttp_2xxWithANonJsonBody_KeepsTheBodyAsAJsonString()
    {
        BranchOutcome.FromHttp(200, "done").ResultJson.ShouldBe("\"done\"");
        BranchOutcome.FromHttp(200, null).ResultJson.ShouldBeNull();
        BranchOutcome.FromHttp(200, "  ").ResultJson.ShouldBeNull();
    }

    [Theory]
    [InlineData(400)]
    [InlineData(404)]
    [InlineData(409)]
    [InlineData(422)]
    public void FromHttp_ADefinitive4xx_IsAFailureNamingTheProblemDetail(int status)
    {
        var outcome = BranchOutcome.FromHttp(status, """{"type":"x","title":"Declined","detail":"insufficient funds"}""");

        outcome.ShouldBe(BranchOutcome.Failure(status, $"HTTP {status}: insufficient funds"));
    }

    [Theory]
    [InlineData(408)]
    [InlineData(425)]
    [InlineData(429)]
    [InlineData(500)]
    [InlineData(502)]
    [InlineData(503)]
    [InlineData(504)]
    [InlineData(302)]
    [InlineData(101)]
    public void FromHttp_TimeoutsThrottlingServerErrorsAndEverythingElse_AreUnknown(int status)
    {
        // A 5xx may come after the participant applied the effect (a proxy timing out, a crash
        // while answering): the coordinator must retry it with the same key, never take it as a NO.
        var outcome = BranchOutcome.FromHttp(status, "upstream timed out");

        outcome.ShouldBe(BranchOutcome.Unknown(status, $"HTTP {status}: upstream timed out"));
    }

    [Fact]
    public void FromHttp_Describes_TheFirstKnownField_OrTheStatusAlone_AndClipsLongText()
    {
        BranchOutcome.FromHttp(409, """{"error":"out of stock"}""").Error.ShouldBe("HTTP 409: out of stock");
        BranchOutcome.FromHttp(409, """{"title":"Conflict","reason":"later"}""").Error.ShouldBe("HTTP 409: Conflict");
        BranchOutcome.FromHttp(409, """{"detail":42}""").Error.ShouldBe("HTTP 409");
        BranchOutcome.FromHttp(409, "[1,2]").Error.ShouldBe("HTTP 409");
        BranchOutcome.FromHttp(503, null).Error.ShouldBe("HTTP 503");
        BranchOutcome.FromHttp(500, new string('x', 400)).Error.ShouldBe($"HTTP 500: {new string('x', 300)}… (truncated, 400 bytes)");
        BranchOutcome.FromHttp(409, "{\"detail\":\"" + new string('é', 400) + "\"}").Error.ShouldBe($"HTTP 409: {new string('é', 300)}… (truncated, 800 bytes)");
    }
}
