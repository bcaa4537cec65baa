<#
.SYNOPSIS
  Runs the recipes of docs/windows-clients.md against a bitsd and prints a result table.

.DESCRIPTION
  UNVERIFIED: written without a Windows machine (none runs in bitsd's CI). Each step's server
  side is tested on Linux (the test named in its row); this script is how a Windows user tells
  us what the client side does. Start bitsd with a capture first, so every exchange is recorded:

      bitsd serve --config bitsd.toml --capture /var/lib/bitsd/capture

  then run, on Windows (PowerShell 5.1 or 7, BitsTransfer module):

      .\verify-bitsd.ps1 -Http http://srv:8080/upload -Https https://srv:8443/upload -User alice

  -Https and -User are optional (the Basic-over-HTTPS step is skipped without them). The
  upload-reply step needs a vdir with notification_type set; give its URL with -ReplyVdir.
  Send us the table and the capture files (one per session, no file contents, no passwords).
#>
param(
    [Parameter(Mandatory)] [string] $Http,
    [string] $Https,
    [string] $User,
    [string] $ReplyVdir,
    [string] $Work = (Join-Path $env:TEMP "bitsd-verify")
)
$ErrorActionPreference = 'Stop'
Import-Module BitsTransfer
New-Item -ItemType Directory -Force -Path $Work | Out-Null
$stamp = Get-Date -Format 'yyyyMMdd-HHmmss'
$results = @()

function New-TestFile([string] $Name, [long] $Bytes) {
    $path = Join-Path $Work $Name
    $buf = New-Object byte[] (1MB)
    (New-Object Random 20).NextBytes($buf)
    $f = [IO.File]::Create($path)
    try { for ($left = $Bytes; $left -gt 0; $left -= $buf.Length) { $f.Write($buf, 0, [Math]::Min($left, $buf.Length)) } }
    finally { $f.Close() }
    $path
}

function Step([string] $Name, [string] $ServerTest, [scriptblock] $Body) {
    $t = [Diagnostics.Stopwatch]::StartNew()
    try { $detail = & $Body; $ok = 'PASS' } catch { $ok = 'FAIL'; $detail = $_.Exception.Message }
    $script:results += [pscustomobject]@{
        Step = $Name; Result = $ok; Seconds = [Math]::Round($t.Elapsed.TotalSeconds, 1)
        Detail = "$detail"; ServerSideTest = $ServerTest
    }
}

function Wait-Job([object] $Job) {
    while ($Job.JobState -in 'Queued', 'Connecting', 'Transferring', 'TransientError') { Start-Sleep 1 }
    if ($Job.JobState -ne 'Transferred') { throw "job state $($Job.JobState): $($Job.ErrorContextDescription) $($Job.ErrorDescription)" }
}

$small = New-TestFile "small.bin" 3MB

Step 'bitsadmin /transfer /upload' 'crates/bitsd/tests/it/client_roundtrip.rs' {
    bitsadmin /transfer "bitsd-$stamp-a" /upload "$Http/verify-$stamp-a.bin" $small | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "bitsadmin exit $LASTEXITCODE" }
    'uploaded 3 MiB'
}

Step 'Start-BitsTransfer -TransferType Upload' 'crates/bitsd/tests/it/checklist_fragment.rs' {
    Start-BitsTransfer -TransferType Upload -Source $small -Destination "$Http/verify-$stamp-b.bin" -ProxyUsage NoProxy
    'uploaded 3 MiB'
}

if ($ReplyVdir) {
    Step 'bitsadmin upload-reply' 'crates/bitsd/tests/it/upload_reply.rs' {
        $reply = Join-Path $Work "reply-$stamp.bin"
        bitsadmin /create /upload-reply "bitsd-$stamp-r" | Out-Null
        bitsadmin /addfile "bitsd-$stamp-r" "$ReplyVdir/verify-$stamp-r.bin" $small | Out-Null
        bitsadmin /setreplyfilename "bitsd-$stamp-r" $reply | Out-Null
        bitsadmin /resume "bitsd-$stamp-r" | Out-Null
        do { Start-Sleep 1; $state = (bitsadmin /rawreturn /getstate "bitsd-$stamp-r") } while ($state -in 'QUEUED', 'CONNECTING', 'TRANSFERRING', 'TRANSIENT_ERROR')
        if ($state -ne 'TRANSFERRED') { throw "state $state" }
        bitsadmin /complete "bitsd-$stamp-r" | Out-Null
        "reply: $((Get-Item $reply).Length) bytes"
    }
}

if ($Https -and $User) {
    $cred = Get-Credential $User
    Step 'Basic over HTTPS' 'crates/bitsd/tests/it/security.rs' {
        Start-BitsTransfer -TransferType Upload -Source $small -Destination "$Https/verify-$stamp-c.bin" -Authentication Basic -Credential $cred
        'uploaded 3 MiB'
    }
}

Step '100 MiB upload, suspended and resumed' 'crates/bitsd/tests/it/client_roundtrip.rs (resume), crash_recovery.rs' {
    $big = New-TestFile "big.bin" 100MB
    $job = Start-BitsTransfer -TransferType Upload -Source $big -Destination "$Http/verify-$stamp-d.bin" -Asynchronous -DisplayName "bitsd-$stamp-d"
    while ($job.BytesTransferred -lt 20MB -and $job.JobState -in 'Queued', 'Connecting', 'Transferring', 'TransientError') { Start-Sleep -Milliseconds 200 }
    Suspend-BitsTransfer -BitsJob $job | Out-Null
    $at = $job.BytesTransferred
    Start-Sleep 5
    Resume-BitsTransfer -BitsJob $job -Asynchronous | Out-Null
    Wait-Job $job
    Complete-BitsTransfer -BitsJob $job
    "suspended at $at bytes, completed"
}

$results | Format-Table -AutoSize -Wrap
Write-Host "Server side: the capture directory given to 'bitsd serve --capture' (or capture_dir) now holds"
Write-Host "one <session>.jsonl per upload above; 'bitsd replay FILE --url URL' replays one."
