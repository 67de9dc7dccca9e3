-- Orthanc: forward the CR and DX series of each study to mura-node once the study is stable
-- (no new instance for StableAge seconds), all in one job, so that they travel on one association
-- that Orthanc releases when every image is stored (the node's completion.release_trigger_aes can
-- then complete the study seconds after the release instead of after its quiet period).
-- The node's results (SR, SC) come back into the same study; the study becomes stable again and
-- its CR/DX series are forwarded again, which the node acknowledges as identical re-sends without
-- processing anything twice.
-- Narrow the rule further on BodyPartExamined if other CR/DX studies should not leave Orthanc.
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local forward = {}
  for _, s in pairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality == 'CR' or modality == 'DX' then
      table.insert(forward, s['ID'])
    end
  end
  if #forward > 0 then
    RestApiPost('/modalities/mura/store',
                DumpJson({ Resources = forward, Synchronous = false }, true))
  end
end
