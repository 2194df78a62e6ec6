using System.Text;
using FsCheck;
using FsCheck.Fluent;
using Treaty.AspNetCore.Idempotency;

namespace Treaty.AspNetCore.Tests.Idempotency;

/// <summary>The pure decisions: no clock, no database.</summary>
public sealed class IdempotencyRulesTests
{
    private static readonly DateTimeOffset Now = new(2026, 1, 1, 12, 0, 0, TimeSpan.Zero);

    private static IdempotencyRecordState Record(string fingerprint = "fp", bool completed = false, TimeSpan? lockLeft = null, TimeSpan? lifeLeft = null) =>
        new(fingerprint, completed, Now + (lockLeft ?? TimeSpan.FromSeconds(30)), Now + (lifeLeft ?? TimeSpan.FromHours(1)));

    [Fact]
    public void Decide_NoRecord_Runs() =>
        IdempotencyRules.Decide(null, "fp", Now).Action.ShouldBe(IdempotencyAction.Run);

    [Fact]
    public void Decide_ExpiredRecord_RunsWhateverItHolds()
    {
        IdempotencyRules.Decide(Record("other", completed: true, lifeLeft: TimeSpan.Zero), "fp", Now).Action.ShouldBe(IdempotencyAction.Run);
        IdempotencyRules.Decide(Record("fp", completed: false, lifeLeft: TimeSpan.FromTicks(-1)), "fp", Now).Action.ShouldBe(IdempotencyAction.Run);
    }

    [Fact]
    public void Decide_CompletedSameFingerprint_Replays() =>
        IdempotencyRules.Decide(Record(completed: true, lockLeft: TimeSpan.FromSeconds(-100)), "fp", Now).Action.ShouldBe(IdempotencyAction.Replay);

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Decide_DifferentFingerprint_IsAMismatch_CompletedOrNot(bool completed) =>
        IdempotencyRules.Decide(Record("other", completed), "fp", Now).Action.ShouldBe(IdempotencyAction.Mismatch);

    [Fact]
    public void Decide_InFlightWithALiveLock_IsInFlight_RetryAfterTheLockRoundedUp()
    {
        var decision = IdempotencyRules.Decide(Record(lockLeft: TimeSpan.FromSeconds(12.2)), "fp", Now);

        decision.Action.ShouldBe(IdempotencyAction.InFlight);
        decision.RetryAfter.ShouldBe(TimeSpan.FromSeconds(13));
    }

    [Fact]
    public void Decide_InFlightWithAnExpiredLock_IsTakenOver()
    {
        IdempotencyRules.Decide(Record(lockLeft: TimeSpan.Zero), "fp", Now).Action.ShouldBe(IdempotencyAction.TakeOver);
        IdempotencyRules.Decide(Record(lockLeft: TimeSpan.FromMinutes(-5)), "fp", Now).Action.ShouldBe(IdempotencyAction.TakeOver);
    }

    [Fact]
    public void RetryAfter_IsAtLeastOneSecond()
    {
        IdempotencyRules.RetryAfter(Now + TimeSpan.FromMilliseconds(1), Now).ShouldBe(TimeSpan.FromSeconds(1));
        IdempotencyRules.RetryAfter(Now, Now).ShouldBe(TimeSpan.FromSeconds(1));
        IdempotencyRules.RetryAfter(Now + TimeSpan.FromSeconds(60), Now).ShouldBe(TimeSpan.FromSeconds(60));
    }

    [Fact]
    public void Decide_AnyRecord_FollowsTheRulesInOrder()
    {
        var config = Config.QuickThrowOnFailure.WithMaxTest(500);
        Check.One(config, Prop.ForAll(
            ArbMap.Default.ArbFor<byte>(),
            ArbMap.Default.ArbFor<int>(),
            ArbMap.Default.ArbFor<int>(),
            (flags, lockSeconds, lifeSeconds) =>
            {
                var sameFingerprint = (flags & 1) != 0;
                var completed = (flags & 2) != 0;
                var record = new IdempotencyRecordState(sameFingerprint ? "fp" : "x", completed, Now.AddSeconds(lockSeconds % 1000), Now.AddSeconds(lifeSeconds % 1000));
                var decision = IdempotencyRules.Decide(record, "fp", Now);
                var expected =
                    record.ExpiresAt <= Now ? IdempotencyAction.Run
                    : !sameFingerprint ? IdempotencyAction.Mismatch
                    : completed ? IdempotencyAction.Replay
                    : record.LockedUntil > Now ? IdempotencyAction.InFlight
                    : IdempotencyAction.TakeOver;
                return decision.Action == expected
                    && (decision.Action != IdempotencyAction.InFlight || decision.RetryAfter >= TimeSpan.FromSeconds(1));
            }));
    }

    [Theory]
    [InlineData(200, true)]
    [InlineData(201, true)]
    [InlineData(204, true)]
    [InlineData(303, true)]
    [InlineData(400, true)]
    [InlineData(404, true)]
    [InlineData(409, true)]
    [InlineData(422, true)]
    [InlineData(408, false)]
    [InlineData(425, false)]
    [InlineData(429, false)]
    [InlineData(500, false)]
    [InlineData(503, false)]
    [InlineData(101, false)]
    public void Classify_FinalAnswersAreStored_FailuresReleased(int status, bool stored) =>
        IdempotencyRules.Classify(status).ShouldBe(stored ? ResponseDisposition.Store : ResponseDisposition.Release);

    [Theory]
    [InlineData("abc", nameof(KeyCheck.Valid), "abc")]
    [InlineData("\"abc\"", nameof(KeyCheck.Valid), "abc")]
    [InlineData("", nameof(KeyCheck.Empty), "")]
    [InlineData("\"\"", nameof(KeyCheck.Empty), "")]
    [InlineData("a\u0001b", nameof(KeyCheck.InvalidCharacters), "")]
    [InlineData("caf\u00e9", nameof(KeyCheck.InvalidCharacters), "")]
    public void CheckKey_OneValue(string value, string expected, string expectedKey)
    {
        IdempotencyRules.CheckKey([value], 255, out var key).ToString().ShouldBe(expected);
        key.ShouldBe(expectedKey);
    }

    [Fact]
    public void CheckKey_MissingTooLongAndRepeated()
    {
        IdempotencyRules.CheckKey([], 255, out _).ShouldBe(KeyCheck.Missing);
        IdempotencyRules.CheckKey(["a", "b"], 255, out _).ShouldBe(KeyCheck.Multiple);
        IdempotencyRules.CheckKey([new string('k', 256)], 255, out _).ShouldBe(KeyCheck.TooLong);
        IdempotencyRules.CheckKey([new string('k', 255)], 255, out _).ShouldBe(KeyCheck.Valid);
        IdempotencyRules.CheckKey(["\"" + new string('k', 255) + "\""], 255, out _).ShouldBe(KeyCheck.Valid);
    }

    [Fact]
    public void Fingerprint_JsonBodies_IgnoreKeyOrderAndWhitespace()
    {
        var a = Fingerprint("""{"b":[1,{"y":2,"x":"\u0041"}],"a":null}""");
        var b = Fingerprint("""  { "a" : null , "b" : [ 1 , { "x" : "A" , "y" : 2 } ] }  """);

        a.ShouldBe(b);
        a.Length.ShouldBe(64);
    }

    [Fact]
    public void Fingerprint_DiffersByBodyValueArrayOrderMethodRouteAndPath()
    {
        var baseline = Fingerprint("""{"a":[1,2]}""");

        Fingerprint("""{"a":[2,1]}""").ShouldNotBe(baseline);
        Fingerprint("""{"a":[1,3]}""").ShouldNotBe(baseline);
        Fingerprint("""{"a":[1,2]}""", method: "PUT").ShouldNotBe(baseline);
        Fingerprint("""{"a":[1,2]}""", route: "/other").ShouldNotBe(baseline);
        Fingerprint("""{"a":[1,2]}""", path: "/charges?x=1").ShouldNotBe(baseline);
        Fingerprint("""{"a":[1,2]}""", method: "post").ShouldBe(baseline);
    }

    [Fact]
    public void Fingerprint_NonJsonOrInvalidJson_HashesTheRawBytes()
    {
        Fingerprint("""{"a":1, "b":2}""", contentType: "text/plain").ShouldNotBe(Fingerprint("""{"b":2,"a":1}""", contentType: "text/plain"));
        Fingerprint("{not json").ShouldBe(Fingerprint("{not json"));
        Fingerprint("{not json").ShouldNotBe(Fingerprint("{not json "));
        Fingerprint("""{"a":1} trailing""").ShouldNotBe(Fingerprint("""{"a":1}"""));
    }

    [Fact]
    public void Fingerprint_ProblemJsonIsCanonicalizedToo() =>
        Fingerprint("""{"b":1,"a":2}""", contentType: "application/merge-patch+json")
            .ShouldBe(Fingerprint("""{"a":2,"b":1}""", contentType: "application/merge-patch+json"));

    [Fact]
    public void Fingerprint_JsonWithALoneSurrogateEscape_DoesNotThrow()
    {
        // valid JSON syntax, but "\ud800" is no UTF-16 text: hashed by its raw bytes, never a 500
        Fingerprint("""{"a":"\ud800"}""").ShouldBe(Fingerprint("""{"a":"\ud800"}"""));
        Fingerprint("""{"\udc00":1}""").ShouldNotBe(Fingerprint("""{"\udc01":1}"""));
    }

    private static string Fingerprint(string body, string method = "POST", string route = "/charges", string path = "/charges", string contentType = "application/json; charset=utf-8") =>
        IdempotencyFingerprint.Compute(method, route, path, contentType, Encoding.UTF8.GetBytes(body));
}
